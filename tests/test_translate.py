"""Using a trained model: evaluate (BLEU/chrF report), average, and translate in batch and
interactively, on the tiny toy model; plus unit tests of word alignment and the text heatmap."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOY_ES, write_lines
from sacrebleu.metrics import BLEU

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.cli import main
from seq2seq.evaluate import DecodeOptions, evaluate
from seq2seq.model import load_trained
from seq2seq.search import max_output_lengths
from seq2seq.translate import (
    SHADES,
    Translator,
    attention_heatmap,
    pharaoh,
    translate_batch,
    word_alignment,
    word_spans,
)

PAIR = re.compile(r"^(\d+)-(\d+)$")
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 cores: keep child processes to one thread


def toy_words(count: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(TOY_ES) for _ in range(count))


def file_lines(path: Path) -> list[str]:
    """Lines of a file written one per line (each ends with a newline)."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


@pytest.fixture(scope="module")
def translator(toy_model) -> Translator:
    """The toy model with the default decoding options (beam 5)."""
    return Translator(str(toy_model["checkpoint"]), DecodeOptions(), device="cpu")


@pytest.fixture(scope="module")
def corpus(toy_model) -> tuple[list[str], list[str]]:
    return toy_model["src"].read_text().splitlines(), toy_model["ref"].read_text().splitlines()


def checkpoint_copy(toy_model, tmp_path: Path) -> Path:
    """The best checkpoint copied to tmp_path, so default outputs beside it stay out of the shared run."""
    return Path(shutil.copy(toy_model["checkpoint"], tmp_path / "best.pt"))


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("seq2seq: error: ")
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


# --- evaluate --------------------------------------------------------------------------------------


def test_evaluate_writes_hypotheses_and_a_report(toy_model, tmp_path: Path):
    options = DecodeOptions(beam_size=3)
    hyp, report_path = tmp_path / "out" / "test.hyp", tmp_path / "report.json"
    report = evaluate(
        str(toy_model["checkpoint"]),
        src=str(toy_model["src"]),
        ref=str(toy_model["ref"]),
        options=options,
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
    assert 0 <= saved["chrf"] <= 100 and saved["chrf"] >= 90
    assert "tok:13a" in saved["bleu_signature"] and "nrefs:1" in saved["bleu_signature"]
    assert "nrefs:1" in saved["chrf_signature"] and "nc:6" in saved["chrf_signature"]
    assert saved["bleu_text"].startswith("BLEU = ") and saved["chrf_text"].startswith("chrF2 = ")
    assert saved["decoding"] == vars(options) and saved["decoding"]["beam_size"] == 3
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
    assert "empty" in one_line_error(capsys)


def misaligned_ref(toy_model, tmp_path: Path) -> list[str]:
    ref = write_lines(tmp_path / "short.en", toy_model["ref"].read_text().splitlines()[:-1])
    return ["--src", str(toy_model["src"]), "--ref", str(ref)]


EVALUATE_ERRORS = {
    "misaligned --src/--ref": (misaligned_ref, "misaligned test set: "),
    "--src without --ref": (lambda m, t: ["--src", str(m["src"])], "give both --src and --ref"),
    "--beam 0": (lambda m, t: ["--beam", "0"], "--beam must be 1 or more, got 0"),
    "negative --alpha": (lambda m, t: ["--alpha", "-1"], "--alpha must be 0 or more"),
    "no test set": (lambda m, t: ["--split", "test"], "has no data.test set: give --src and --ref"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_ERRORS))
def test_cli_evaluate_user_errors_exit_2_with_one_line(toy_model, tmp_path: Path, capsys, case: str):
    make_args, expected = EVALUATE_ERRORS[case]
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    assert main(["evaluate", str(checkpoint), *make_args(toy_model, tmp_path)]) == 2
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

    model, _, _, step = load_trained(output)  # loadable and usable
    assert step == 80 and torch.equal(model.state_dict()[name], averaged["model"][name])
    assert Translator(str(output), DecodeOptions(beam_size=1), device="cpu").translate(["uno dos"])[0][0].ids

    # --last 2 on the run directory picks the same two checkpoints
    again = tmp_path / "avg-last.pt"
    assert main(["average", str(run_dir), "--last", "2", "-o", str(again)]) == 0
    assert torch.equal(load_checkpoint(again)["model"][name], averaged["model"][name])


def test_cli_average_needs_two_checkpoints(toy_model, tmp_path: Path, capsys):
    assert main(["average", str(toy_model["checkpoint"]), "-o", str(tmp_path / "avg.pt")]) == 2
    assert "at least two checkpoints" in one_line_error(capsys)
    assert not (tmp_path / "avg.pt").exists()


# --- translate: batch mode -------------------------------------------------------------------------


def test_translate_batch_keeps_line_count_and_empty_lines(translator, corpus):
    sources, references = corpus
    lines = ["", sources[0], "", "", sources[1], "   ", *sources[2:10], ""]
    sink = io.StringIO()
    assert translate_batch(translator, io.StringIO("".join(f"{line}\n" for line in lines)), sink) == len(lines)
    outputs = sink.getvalue().split("\n")
    assert outputs.pop() == "" and len(outputs) == len(lines)
    for line, output in zip(lines, outputs):
        if not line.strip():
            assert output == ""  # empty in, empty out
        else:
            assert output == translator.text(translator.translate([line])[0][0])  # in its own place
    memorised = dict(zip(sources, references))
    right = sum(output == memorised[line] for line, output in zip(lines, outputs) if line.strip())
    assert right >= 0.8 * sum(1 for line in lines if line.strip())


def test_translate_batch_truncates_a_very_long_line_with_a_warning(translator, corpus, caplog):
    caplog.set_level(logging.WARNING, logger="seq2seq")
    sources = corpus[0]
    lines = [sources[0], toy_words(2000), sources[1]]
    sink = io.StringIO()
    assert translate_batch(translator, io.StringIO("\n".join(lines) + "\n"), sink) == 3
    outputs = sink.getvalue().split("\n")[:-1]
    assert len(outputs) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["line 2 has 2000 pieces: only the first 249 are translated (--max-src-length)"]
    limit = int(max_output_lengths(torch.tensor([250]), 1.5)) - 1
    assert 0 < len(outputs[1].split()) <= limit
    assert outputs[0] == translator.text(translator.translate([sources[0]])[0][0])
    assert outputs[2] == translator.text(translator.translate([sources[1]])[0][0])


def test_translate_batch_n_best(toy_model, corpus):
    n_best = Translator(str(toy_model["checkpoint"]), DecodeOptions(beam_size=2), device="cpu", n_best=3)
    sink = io.StringIO()
    translate_batch(n_best, io.StringIO(f"{corpus[0][0]}\n\n"), sink)
    first, empty = sink.getvalue().split("\n")[:-1]
    fields = first.split(" ||| ")
    assert len(fields) == 6  # text ||| score, three times (the beam is widened to 3)
    scores = [float(s) for s in fields[1::2]]
    assert scores == sorted(scores, reverse=True)
    one_best = Translator(str(toy_model["checkpoint"]), DecodeOptions(beam_size=3), device="cpu")
    assert fields[0] == one_best.text(one_best.translate([corpus[0][0]])[0][0])  # the 1-best comes first
    assert empty == " ||| 0.0000"


def test_cli_translate_batch_with_alignments(toy_model, translator, corpus, tmp_path: Path, capsys):
    sources = corpus[0]
    long_line = toy_words(2000, seed=1)
    lines = [sources[0], "", sources[1], long_line, "", *sources[2:12], ""]
    source = write_lines(tmp_path / "in.es", lines)
    output, alignment = tmp_path / "out.en", tmp_path / "out.align"
    args = ["translate", str(toy_model["checkpoint"]), "--input", str(source), "--output", str(output)]
    assert main(args + ["--alignment", str(alignment), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "line 4 has 2000 pieces: only the first 249 are translated" in captured.err

    outputs, alignments = file_lines(output), file_lines(alignment)
    assert len(outputs) == len(alignments) == len(lines)
    diagonal = total = 0
    for line, out, links in zip(lines, outputs, alignments):
        if not line.strip():
            assert out == "" and links == ""
            continue
        src_words, out_words = min(len(line.split()), 249), len(out.split())
        pairs = [PAIR.match(link) for link in links.split(" ")]
        assert all(pairs), links
        pairs = [(int(m[1]), int(m[2])) for m in pairs]
        assert all(0 <= i < src_words and 0 <= j < out_words for i, j in pairs), (line, out, links)
        assert [j for _, j in pairs] == list(range(out_words))  # each output word aligned once, in order
        if line != long_line:
            diagonal += sum(i == j for i, j in pairs)
            total += len(pairs)
    assert diagonal >= 0.5 * total  # word-for-word toy corpus: attention is mostly monotone
    assert outputs[0] == translator.text(translator.translate([sources[0]])[0][0])


def test_cli_translate_reads_stdin_and_writes_stdout(toy_model, translator, corpus, monkeypatch, capsys):
    lines = [corpus[0][4], "", corpus[0][5]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    assert main(["translate", str(toy_model["checkpoint"]), "--device", "cpu"]) == 0
    expected = [translator.text(h[0]) for h in translator.translate(lines)]
    assert capsys.readouterr().out == "".join(f"{t}\n" for t in expected)
    assert expected[1] == "" and expected[0] and expected[2]


def test_cli_translate_keeps_a_line_with_a_carriage_return_whole(toy_model, tmp_path: Path, capsys):
    source = tmp_path / "in.es"
    source.write_bytes(b"uno dos\rtres\ncuatro\n")  # 2 lines, as wc -l and evaluate count them
    output = tmp_path / "out.en"
    assert main(["translate", str(toy_model["checkpoint"]), "-i", str(source), "-o", str(output), "--beam", "1"]) == 0
    assert len(file_lines(output)) == 2


def random_bytes(tmp_path: Path, seed: int = 0) -> Path:
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    return path


def truncated(tmp_path: Path, toy_model) -> Path:
    data = toy_model["checkpoint"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


def missing_weights(tmp_path: Path, toy_model) -> Path:
    payload = load_checkpoint(toy_model["checkpoint"])
    del payload["model"]["decoder.output.weight"]
    path = tmp_path / "incomplete.pt"
    save_checkpoint({k: v for k, v in payload.items() if k not in ("kind", "format_version")}, path)
    return path


BAD_CHECKPOINTS = {
    "random bytes 0": (lambda tmp_path, toy_model: random_bytes(tmp_path, 0), "checkpoint"),
    "random bytes 1": (lambda tmp_path, toy_model: random_bytes(tmp_path, 1), "checkpoint"),
    "random bytes 3": (lambda tmp_path, toy_model: random_bytes(tmp_path, 3), "checkpoint"),
    "truncated": (truncated, "truncated or corrupt"),
    "missing weights": (missing_weights, "is not a complete seq2seq checkpoint"),
    "a directory": (lambda tmp_path, toy_model: tmp_path, "is a directory"),
}


@pytest.mark.parametrize("command", ["translate", "evaluate"])
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_cli_bad_checkpoint_is_one_line_exit_2(toy_model, tmp_path: Path, capsys, case: str, command: str):
    make, expected = BAD_CHECKPOINTS[case]
    path = make(tmp_path, toy_model)
    source = write_lines(tmp_path / "in.es", ["uno dos"])
    extra = ["--input", str(source)] if command == "translate" else ["--src", str(source), "--ref", str(source)]
    assert main([command, str(path), *extra]) == 2
    message = one_line_error(capsys)
    assert str(path) in message and expected in message


@pytest.mark.parametrize("seed", [2, 20])  # IndexError, KeyError
def test_cli_random_bytes_that_upset_the_unpickler_are_one_line_exit_2(tmp_path: Path, capsys, seed: int):
    path = random_bytes(tmp_path, seed)
    source = write_lines(tmp_path / "in.es", ["uno dos"])
    assert main(["translate", str(path), "--input", str(source)]) == 2
    assert str(path) in one_line_error(capsys)


def test_corrupt_checkpoint_in_a_subprocess_has_no_traceback(tmp_path: Path):
    path = random_bytes(tmp_path)
    write_lines(tmp_path / "in.es", ["uno dos tres"])
    result = subprocess.run(
        [sys.executable, "-m", "seq2seq", "translate", str(path), "--input", "in.es"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=SUBPROCESS_ENV,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"seq2seq: error: {path} is not") and result.stdout == ""


# --- word alignment and the text heatmap, on hand-made weights --------------------------------------


def test_word_spans_group_pieces_into_words():
    assert word_spans(["▁the", "▁ca", "t", "s", "▁sat"]) == [0, 1, 1, 1, 2]
    assert word_spans(["un", "▁word"]) == [0, 1]  # a first piece without '▁' still starts word 0
    assert word_spans(["▁", "x", "▁y"]) == [0, 0, 1]
    assert word_spans([]) == []


def test_word_alignment_of_identity_and_permutation_weights():
    pieces = ["▁a", "▁b", "▁c", "▁d"]
    assert word_alignment(pieces, ["▁w", "▁x", "▁y", "▁z"], torch.eye(4)) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    permutation = [2, 0, 3, 1]
    weights = torch.full((4, 4), 0.05)
    weights[torch.arange(4), torch.tensor(permutation)] = 0.85
    assert word_alignment(pieces, ["▁w", "▁x", "▁y", "▁z"], weights) == [(2, 0), (0, 1), (3, 2), (1, 3)]
    assert pharaoh(word_alignment(pieces, ["▁w", "▁x", "▁y", "▁z"], weights)) == "2-0 0-1 3-2 1-3"


def test_word_alignment_sums_source_pieces_and_pools_output_pieces():
    src = ["▁ab", "c", "▁d"]  # two source words: pieces 0-1 and piece 2
    out = ["▁x", "▁y", "z"]  # two output words: piece 0 and pieces 1-2
    weights = torch.tensor(
        [
            [0.3, 0.3, 0.4],  # piece 2 is the single most attended piece, but word 0 has 0.6
            [0.9, 0.0, 0.1],  # alone, '▁y' points at word 0 ...
            [0.0, 0.0, 1.0],  # ... and 'z' at word 1; together (0.9 vs 1.1) the word points at word 1
        ]
    )
    assert word_alignment(src, out, weights) == [(0, 0), (1, 1)]
    assert word_alignment([], out, torch.zeros(3, 0)) == [] and word_alignment(src, [], torch.zeros(0, 3)) == []
    assert pharaoh([]) == ""


def test_attention_heatmap_draws_shades():
    heatmap = attention_heatmap(["ab", "c"], ["x", "y"], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    pad = " " * 15
    assert heatmap.split("\n") == [
        pad + "a c",  # source pieces written downwards, one column each
        pad + "b",
        pad + "─" * 4,
        " " * 13 + "x ██  ",  # weight 1 is the darkest shade, 0 is blank
        " " * 13 + "y ▒▒▒▒",
    ]
    assert SHADES[0] == " " and SHADES[-1] == "█"


def test_attention_heatmap_labels_and_height_are_bounded():
    src = ["▁" + "s" * 20]
    heatmap = attention_heatmap(src, ["▁" + "o" * 30], torch.tensor([[0.3]]), label_width=6)
    lines = heatmap.split("\n")
    assert len(lines) == 10 + 1 + 1  # header at most 10 rows, a rule, one row per output piece
    assert lines[-1] == "▁ooooo ░░"
    torch.manual_seed(0)
    weights = torch.softmax(torch.randn(3, 4), dim=-1)
    rows = attention_heatmap(["a", "b", "c", "d"], ["x", "y", "z"], weights).split("\n")[-3:]
    for row, values in zip(rows, weights.tolist()):
        cells = row[15:]
        assert cells == "".join(SHADES[min(4, int(w * 5))] * 2 for w in values)


# --- translate: interactive mode in a pseudo-terminal ------------------------------------------------


def test_interactive_prompt_translates_and_draws_attention(toy_model, translator, corpus, tmp_path: Path):
    pexpect = pytest.importorskip("pexpect")
    import matplotlib

    line = corpus[0][5]
    best = translator.translate([line])[0][0]
    expected = translator.text(best)
    heatmap = attention_heatmap(*translator.pieces(line, best))
    assert expected and any(shade in heatmap for shade in SHADES[1:])
    home, png_dir = tmp_path / "home", tmp_path / "png"
    home.mkdir()
    env = {
        **SUBPROCESS_ENV,
        "HOME": str(home),  # the readline history file goes here
        "TERM": "dumb",
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", matplotlib.get_cachedir()),  # no font cache rebuild
    }
    child = pexpect.spawn(
        sys.executable,
        ["-m", "seq2seq", "translate", str(toy_model["checkpoint"]), "--attention-png", str(png_dir)],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 200),
    )
    try:
        child.expect_exact("Translating es -> en. Type a sentence and press Enter; Ctrl-D or :q quits.")
        child.expect_exact("> ")
        child.sendline(line)
        child.expect_exact(f"\r\n{expected}\r\n")
        child.expect_exact(heatmap.replace("\n", "\r\n"))
        child.expect(r"\(attention saved to (\S+)\)")
        saved = Path(child.match.group(1))
        child.expect_exact("> ")
        child.sendline("")  # an empty line is ignored: the prompt comes back
        child.expect_exact("> ")
        child.sendline(":q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert saved == png_dir / "attention-001.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert line in (home / ".seq2seq_history").read_text(encoding="utf-8")
