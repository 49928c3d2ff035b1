"""Scoring a trained model: `evaluate` (translate a test set, BLEU/chrF report) and `average`
(checkpoint averaging), on the tiny toy model, through the library and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_copy, file_lines, one_line_error, write_lines
from sacrebleu.metrics import BLEU, CHRF

from seq2seq.checkpoint import load_checkpoint, load_trained
from seq2seq.cli import main
from seq2seq.config import DecodeConfig
from seq2seq.evaluate import evaluate
from seq2seq.translate import Translator

# --- evaluate --------------------------------------------------------------------------------------


def test_evaluate_writes_hypotheses_and_a_report(toy_model, tmp_path: Path):
    options = DecodeConfig(beam=3)
    hyp, report_path = tmp_path / "out" / "test.hyp", tmp_path / "report.json"
    report = evaluate(
        str(toy_model["checkpoint"]),
        src=str(toy_model["src"]),
        ref=str(toy_model["ref"]),
        decode={"beam": 3},
        output=str(hyp),
        report=str(report_path),
        device="cpu",
    )
    references = toy_model["ref"].read_text().splitlines()
    hypotheses = file_lines(hyp)
    assert len(hypotheses) == len(references) == len(toy_model["src"].read_text().splitlines())

    saved = json.loads(report_path.read_text())
    assert saved == {k: v for k, v in report.items() if k != "report"} and report["report"] == str(report_path)
    expected_bleu = BLEU().corpus_score(hypotheses, [references]).score  # the report scores the written file
    assert saved["bleu"] == pytest.approx(expected_bleu)
    assert saved["bleu"] >= 90  # the toy model memorised these sentences
    assert saved["chrf"] == pytest.approx(CHRF().corpus_score(hypotheses, [references]).score)
    assert saved["chrf"] >= 90
    assert "tok:13a" in saved["bleu_signature"] and "nrefs:1" in saved["bleu_signature"]
    assert "nrefs:1" in saved["chrf_signature"] and "nc:6" in saved["chrf_signature"]
    assert saved["bleu_text"].startswith("BLEU = ") and saved["chrf_text"].startswith("chrF2 = ")
    assert saved["decoding"] == vars(options) and saved["decoding"]["beam"] == 3
    assert saved["sentences_per_s"] > 0 and saved["seconds"] >= 0
    assert saved["test_set"] == {"name": "dev", "sentences": len(references)}  # named after the --src file
    assert saved["step"] == toy_model["summary"]["best_step"]
    assert saved["hypotheses"] == str(hyp)


def test_cli_evaluate_prints_scores_and_signatures(toy_model, tmp_path: Path, capsys):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    args = ["evaluate", str(checkpoint), "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"]), "--beam", "2"]
    assert main(args + ["--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("BLEU = ")
    assert out[1].startswith("  signature: nrefs:1|") and "tok:13a" in out[1]
    assert out[2].startswith("chrF2 = ")
    assert out[3].startswith("  signature: nrefs:1|")
    assert "sentences/s" in out[4]
    hyp = tmp_path / "best.dev.beam2.hyp"  # default: beside the checkpoint
    assert f"hypotheses: {hyp}" in out[4] and f"report: {hyp.with_suffix('.json')}" in out[4]
    report = json.loads(hyp.with_suffix(".json").read_text())
    assert out[0] == report["bleu_text"] and len(file_lines(hyp)) == report["test_set"]["sentences"]


def test_cli_evaluate_int8_reports_the_quantization_beside_fp32(toy_model, tmp_path: Path, capsys):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    args = ["evaluate", str(checkpoint), "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"])]
    assert main(args) == 0
    assert main([*args, "--quantize", "int8"]) == 0
    out = capsys.readouterr().out.splitlines()
    full_hyp, int8_hyp = tmp_path / "best.dev.beam5.hyp", tmp_path / "best.dev.beam5.int8.hyp"  # one does not overwrite
    assert f"hypotheses: {int8_hyp}" in out[-1]
    full, int8 = (json.loads(hyp.with_suffix(".json").read_text()) for hyp in (full_hyp, int8_hyp))
    assert full["quantize"] == "none" and int8["quantize"] == "int8" and int8["device"] == "cpu"
    assert int8["decoding"] == full["decoding"]
    # int8 moves scores a little: a near tie in the beam may go the other way (at beam 2 one of these 30 does)
    same = sum(a == b for a, b in zip(file_lines(int8_hyp), file_lines(full_hyp)))
    assert same >= 29 and full["bleu"] >= 90 and int8["bleu"] >= 90


def test_cli_evaluate_split_uses_the_checkpoints_dev_set(toy_model, tmp_path: Path, capsys):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    assert main(["evaluate", str(checkpoint), "--split", "dev", "--beam", "1"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "best.dev.greedy.json").read_text())
    assert report["test_set"]["name"] == "dev" and report["bleu"] >= 90


def test_cli_evaluate_creates_the_report_directory(toy_model, tmp_path: Path, capsys):
    report = tmp_path / "reports" / "dev.json"
    args = ["--src", str(toy_model["src"]), "--ref", str(toy_model["ref"]), "--report", str(report), "--beam", "1"]
    assert main(["evaluate", str(checkpoint_copy(toy_model, tmp_path)), *args]) == 0
    assert json.loads(report.read_text())["bleu"] >= 90


def test_cli_evaluate_empty_test_set_is_a_user_error(toy_model, tmp_path: Path, capsys):
    src, ref = write_lines(tmp_path / "empty.es", []), write_lines(tmp_path / "empty.en", [])
    assert main(["evaluate", str(checkpoint_copy(toy_model, tmp_path)), "--src", str(src), "--ref", str(ref)]) == 2
    message = one_line_error(capsys)
    assert message == "seq2seq: error: the test set 'empty' is empty: give files with at least one line"


def misaligned_ref(toy_model, tmp_path: Path) -> list[str]:
    ref = write_lines(tmp_path / "short.en", toy_model["ref"].read_text().splitlines()[:-1])
    return ["--src", str(toy_model["src"]), "--ref", str(ref)]


EVALUATE_ERRORS = {
    "misaligned --src/--ref": (
        misaligned_ref,
        "misaligned test set: {src} has 30 lines but {tmp}/short.en has 29; line i of one must translate line i",
    ),
    "--src without --ref": (lambda m, t: ["--src", str(m["src"])], "give both --src and --ref"),
    "--beam 0": (lambda m, t: ["--beam", "0"], "decoding option beam (--beam) must be greater than 0, got 0"),
    "negative --alpha": (lambda m, t: ["--alpha", "-1"], "decoding option alpha (--alpha) must be 0 or more"),
    "no test set": (lambda m, t: ["--split", "test"], "has no data.test set: give --src and --ref"),
    "--temperature 0": (lambda m, t: ["--sample", "--temperature", "0"], "(--temperature) must be greater than 0"),
    "--top-k -1": (lambda m, t: ["--sample", "--top-k", "-1"], "decoding option top_k (--top-k) must be 0 or more"),
    "--top-p 0": (lambda m, t: ["--sample", "--top-p", "0"], "decoding option top_p (--top-p) must be in (0, 1]"),
    "--top-p 1.5": (lambda m, t: ["--sample", "--top-p", "1.5"], "decoding option top_p (--top-p) must be in (0, 1]"),
    "--seed -1": (lambda m, t: ["--sample", "--seed", "-1"], "decoding option seed (--seed) must be 0 or more"),
    "--coverage-penalty -1": (lambda m, t: ["--coverage-penalty", "-1"], "(--coverage-penalty) must be 0 or more"),
    "--temperature nan": (
        lambda m, t: ["--temperature", "nan"],
        "decoding option temperature (--temperature) must be a finite number, got nan",
    ),
    "--temperature inf": (
        lambda m, t: ["--sample", "--temperature", "inf"],
        "decoding option temperature (--temperature) must be a finite number, got inf",
    ),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_ERRORS))
def test_cli_evaluate_user_errors_exit_2_with_one_line(toy_model, tmp_path: Path, capsys, case: str):
    make_args, expected = EVALUATE_ERRORS[case]
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    assert main(["evaluate", str(checkpoint), *make_args(toy_model, tmp_path)]) == 2
    expected = expected.replace("{tmp}", str(tmp_path)).replace("{src}", str(toy_model["src"]))
    assert expected in one_line_error(capsys)
    assert not list(tmp_path.glob("*.hyp"))


def test_cli_evaluate_missing_checkpoint(toy_model, tmp_path: Path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["evaluate", str(missing), "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"])]) == 2
    assert f"checkpoint not found: {missing}" in one_line_error(capsys)


# --- average ---------------------------------------------------------------------------------------


def test_cli_average_two_step_checkpoints(toy_model, tmp_path: Path, capsys):
    run_dir = toy_model["run_dir"]
    steps = sorted(run_dir.glob("step-*.pt"))
    assert [p.name for p in steps] == ["step-0000040.pt", "step-0000080.pt"]
    output = tmp_path / "avg.pt"
    assert main(["average", *map(str, steps), "-o", str(output)]) == 0
    assert f"averaged 2 checkpoints into {output}" in capsys.readouterr().out

    first, second = (torch.load(p, weights_only=True)["model"] for p in steps)
    averaged = load_checkpoint(output)
    name = "decoder.output.weight"
    assert not torch.equal(first[name], second[name])  # so the mean is not trivially either one
    torch.testing.assert_close(averaged["model"][name], (first[name] + second[name]) / 2)
    for key, tensor in averaged["model"].items():  # every floating tensor is the mean
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (first[key] + second[key]) / 2)
    assert averaged["averaged_from"] == [str(p) for p in steps] and averaged["step"] == 80

    trained = load_trained(output)  # loadable and usable
    assert trained.step == 80 and torch.equal(trained.model.state_dict()[name], averaged["model"][name])
    assert Translator(str(output), {"beam": 1}, device="cpu").translate(["uno dos"])[0].best.ids

    # --last 2 on the run directory picks the same two checkpoints
    again = tmp_path / "avg-last.pt"
    assert main(["average", str(run_dir), "--last", "2", "-o", str(again)]) == 0
    assert torch.equal(load_checkpoint(again)["model"][name], averaged["model"][name])


def test_cli_average_needs_two_checkpoints(toy_model, tmp_path: Path, capsys):
    assert main(["average", str(toy_model["checkpoint"]), "-o", str(tmp_path / "avg.pt")]) == 2
    assert "at least two checkpoints" in one_line_error(capsys)
    assert not (tmp_path / "avg.pt").exists()


def test_evaluate_takes_a_path_and_samples_with_a_seeded_file_name(toy_model, tmp_path: Path, caplog):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    report = evaluate(
        checkpoint,
        src=str(toy_model["src"]),
        ref=str(toy_model["ref"]),
        device="cpu",
        decode={"sample": True, "seed": 7, "top_k": 1, "beam": 3},
    )
    assert report["checkpoint"] == str(checkpoint) and report["hypotheses"] == str(tmp_path / "best.dev.sample7.hyp")
    assert report["bleu"] > 90  # top-k 1: the most probable piece each time, i.e. greedy
    assert "--beam ignored when sampling (--sample)" in caplog.text


def test_an_option_the_decoding_does_not_use_is_named_once(toy_model, tmp_path: Path, capsys):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    args = ["evaluate", str(checkpoint), "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"]), "--top-k", "5"]
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--top-k" in line]
    assert len(warnings) == 1 and warnings[0].endswith("--top-k only used when sampling (--sample): ignored")
