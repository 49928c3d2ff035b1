"""End to end: training learns, writes its run directory, reproduces, resumes; the CLI fails cleanly."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_toy_config, write_lines, write_toy_corpus

from seq2seq.attention import ATTENTION_TYPES
from seq2seq.checkpoint import save_checkpoint
from seq2seq.cli import main
from seq2seq.config import config_from_dict, load_config
from seq2seq.data import collate
from seq2seq.errors import UserError
from seq2seq.metrics import bleu
from seq2seq.model import load_trained
from seq2seq.plots import read_jsonl
from seq2seq.search import decode_lines
from seq2seq.train import Trainer, train

OVERFIT_STEPS = 80  # BLEU 100 by step 50-60 for every seed tried; 80 leaves a margin (about 2 s)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> dict:
    """One overfitting run on the toy corpus (dev = train), shared by the tests that inspect it."""
    directory = tmp_path_factory.mktemp("toy_run")
    config = make_toy_config(directory, write_toy_corpus(directory))
    config["train"].update(max_steps=OVERFIT_STEPS, validate_every=OVERFIT_STEPS // 2, log_every=10)
    summary = train(config_from_dict(config))
    return {"summary": summary, "run_dir": Path(config["train"]["run_dir"]), "config": config}


# --- learning ------------------------------------------------------------------------------------


def test_tiny_model_overfits_tiny_corpus(toy_run):
    summary, run_dir = toy_run["summary"], toy_run["run_dir"]
    assert summary["steps"] == OVERFIT_STEPS and summary["stop_reason"] == f"reached train.max_steps ({OVERFIT_STEPS})"
    assert summary["best_dev_bleu"] >= 90
    assert summary["skipped_updates"] == 0 and not summary["interrupted"]
    losses = [p["train_loss"] for p in read_jsonl(run_dir / "progress.jsonl")]
    assert losses[-1] < losses[0] / 10


def test_run_directory_holds_every_artefact(toy_run):
    run_dir, config = toy_run["run_dir"], toy_run["config"]
    for name in (
        "config.yaml",
        "train.log",
        "metrics.jsonl",
        "progress.jsonl",
        "curves.png",
        "best.pt",
        "last.pt",
        "spm.joint.model",
        "summary.json",
    ):
        assert (run_dir / name).is_file(), f"{name} missing from the run directory"
    assert load_config(run_dir / "config.yaml") == config_from_dict(config)

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [OVERFIT_STEPS // 2, OVERFIT_STEPS]
    assert all(0 <= m["dev_bleu"] <= 100 and m["dev_loss"] >= 0 for m in metrics)
    assert max(m["dev_bleu"] for m in metrics) == toy_run["summary"]["best_dev_bleu"]

    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in run_dir.glob("step-*.pt")] == [f"step-{OVERFIT_STEPS:07d}.pt"]  # keep_checkpoints: 1
    assert json.loads((run_dir / "summary.json").read_text()) == toy_run["summary"]
    assert not list(run_dir.glob(".*.tmp"))


def test_best_checkpoint_alone_translates(toy_run):
    path = toy_run["run_dir"] / "best.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == toy_run["summary"]["best_step"] and "optimizer" not in payload
    model, tokenizer, config, step = load_trained(path)
    assert step == payload["step"] and config == config_from_dict(toy_run["config"])

    prefix = toy_run["config"]["data"]["dev"]
    sources = Path(f"{prefix}.es").read_text().splitlines()
    references = Path(f"{prefix}.en").read_text().splitlines()
    hypotheses = [best[0] for best in decode_lines(model, tokenizer, sources + [""], torch.device("cpu"))]
    texts = [tokenizer.decode_tgt(h.ids) for h in hypotheses]
    assert texts[-1] == ""  # an empty line gives an empty translation
    assert bleu(texts[:-1], references).value >= 90
    first = hypotheses[0]
    assert first.attention.shape == (len(first.ids) + 1, len(tokenizer.encode_src([sources[0]])[0]) + 1)


@pytest.mark.parametrize(
    "model",
    [{"attention": {"type": name}} for name in sorted(ATTENTION_TYPES)]
    + [{"input_feeding": True, "tie_embeddings": True, "embedding_size": 64, "decoder_layers": 2, "encoder_layers": 2}],
    ids=[*sorted(ATTENTION_TYPES), "input_feeding-tied-2layers"],
)
def test_every_model_variant_trains_and_validates(tiny_config, model):
    """A few steps on real text with each attention type: the whole pipeline runs and learns a little."""
    tiny_config["model"].update(model)
    tiny_config["train"].update(max_steps=6, validate_every=6, validate_max_sentences=5, lr=0.005)
    summary = train(config_from_dict(tiny_config))
    run_dir = Path(tiny_config["train"]["run_dir"])
    losses = [p["train_loss"] for p in read_jsonl(run_dir / "progress.jsonl")]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert summary["best_dev_bleu"] >= 0 and (run_dir / "best.pt").is_file()


# --- reproducibility and resume --------------------------------------------------------------------


def regularised_toy_config(directory: Path, corpus: dict, run: str, max_steps: int, seed: int = 42) -> dict:
    """Dropout and label smoothing on, so every random number generator matters; no dev set (fast)."""
    config = make_toy_config(directory, corpus)
    config["model"]["dropout"] = 0.3
    config["data"]["dev"] = None
    config["data"]["cache_dir"] = str(directory / f"cache-{run}")  # nothing shared between runs
    config["train"].update(
        run_dir=str(directory / run), max_steps=max_steps, validate_every=4, log_every=1, label_smoothing=0.1, seed=seed
    )
    return config


def losses_and_weights(run_dir: Path) -> tuple[list[float], dict]:
    losses = [p["train_loss"] for p in read_jsonl(run_dir / "progress.jsonl")]
    return losses, torch.load(run_dir / "last.pt", weights_only=True)["model"]


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert torch.equal(tensor, second[key]), f"{key} differs"


def test_same_config_and_seed_reproduce_exactly(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path)
    for run in ("a", "b"):
        train(config_from_dict(regularised_toy_config(tmp_path, corpus, run, max_steps=6)))
    train(config_from_dict(regularised_toy_config(tmp_path, corpus, "c", max_steps=6, seed=7)))
    losses_a, weights_a = losses_and_weights(tmp_path / "a")
    losses_b, weights_b = losses_and_weights(tmp_path / "b")
    losses_c, _ = losses_and_weights(tmp_path / "c")
    assert len(losses_a) == 6
    assert losses_a == losses_b
    assert_same_weights(weights_a, weights_b)
    assert losses_c != losses_a  # the seed matters, so equality above is not vacuous


@pytest.mark.parametrize(
    "dropout",
    [0.0, 0.3],
)
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, dropout: float):
    corpus = write_toy_corpus(tmp_path)

    def config(run: str, max_steps: int):
        data = regularised_toy_config(tmp_path, corpus, run, max_steps)
        data["model"]["dropout"] = dropout
        return config_from_dict(data)

    train(config("whole", 8))
    first_half = train(config("halves", 3))
    assert first_half["epochs"] % 1 != 0, "the break should fall inside an epoch"
    resumed = train(config("halves", 8), resume=True)
    assert resumed["steps"] == 8
    losses_whole, weights_whole = losses_and_weights(tmp_path / "whole")
    losses_halves, weights_halves = losses_and_weights(tmp_path / "halves")
    assert losses_halves == losses_whole
    assert_same_weights(weights_whole, weights_halves)


def test_resume_with_a_different_config_is_refused(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path)
    train(config_from_dict(regularised_toy_config(tmp_path, corpus, "run", max_steps=2)))
    changed = regularised_toy_config(tmp_path, corpus, "run", max_steps=4)
    changed["train"]["lr"] = 0.5
    with pytest.raises(UserError, match="holds a run of a different config"):
        train(config_from_dict(changed), resume=True)


def test_train_log_records_a_library_run(toy_config, caplog):
    caplog.set_level(logging.WARNING)  # Python's default: the caller configured no logging
    toy_config["train"].update(max_steps=2, validate_every=2)
    train(config_from_dict(toy_config))
    log = (Path(toy_config["train"]["run_dir"]) / "train.log").read_text()
    assert "Validation at step 2" in log and "Finished" in log


def test_failed_run_leaves_no_log_handler_behind(tmp_path: Path, tiny_config):
    write_lines(Path(f"{tiny_config['data']['train']}.en"), ["one line only"])
    with pytest.raises(UserError, match="misaligned corpus"):
        train(config_from_dict(tiny_config))
    leftovers = [h for h in logging.getLogger("seq2seq").handlers if isinstance(h, logging.FileHandler)]
    assert leftovers == []


# --- the command line -----------------------------------------------------------------------------


def write_config(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def misaligned(tmp_path: Path, config: dict) -> list[str]:
    write_lines(Path(f"{config['data']['train']}.en"), ["only one line"])
    return ["train", write_config(tmp_path, config)]


def existing_run(tmp_path: Path, config: dict) -> list[str]:
    save_checkpoint({"step": 3}, Path(config["train"]["run_dir"]) / "last.pt")
    return ["train", write_config(tmp_path, config)]


def unknown_key(tmp_path: Path, config: dict) -> list[str]:
    config["train"]["lrr"] = 0.01
    return ["train", write_config(tmp_path, config)]


def wrong_type(tmp_path: Path, config: dict) -> list[str]:
    config["model"]["embedding_size"] = "big"
    return ["train", write_config(tmp_path, config)]


CLI_ERRORS = {
    "unknown key": (unknown_key, "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    "wrong type": (wrong_type, "config key 'model.embedding_size' must be an integer, got 'big'"),
    "bad --set": (
        lambda tmp_path, config: ["train", write_config(tmp_path, config), "--set", "model.dropout=1.5"],
        "config key 'model.dropout' must be in [0, 1), got 1.5",
    ),
    "missing config file": (lambda tmp_path, config: ["train", str(tmp_path / "nope.yaml")], "config file not found"),
    "misaligned corpus": (misaligned, "misaligned corpus: "),
    "existing run": (existing_run, "already holds a run: add --resume"),
    "nothing to resume": (
        lambda tmp_path, config: ["train", write_config(tmp_path, config), "--resume"],
        "nothing to resume",
    ),
    "info on a bad file": (
        lambda tmp_path, config: ["info", config["data"]["train"] + ".es"],
        "corpus/train.es",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_user_errors_print_one_line_and_exit_2(tmp_path: Path, tiny_config, capsys, case: str):
    make_args, expected = CLI_ERRORS[case]
    args = make_args(tmp_path, tiny_config)
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("seq2seq: error: ")
    assert expected in lines[0]
    assert captured.out == ""
    assert not (Path(tiny_config["train"]["run_dir"]) / "best.pt").exists()


def test_cli_trains_and_logs(tmp_path: Path, toy_config, capsys):
    toy_config["train"].update(max_steps=4, validate_every=2)
    config = write_config(tmp_path, toy_config)
    assert main(["train", config]) == 0
    run_dir = Path(toy_config["train"]["run_dir"])
    log = (run_dir / "train.log").read_text()
    assert "Validation at step 2" in log and "Validation at step 4" in log and "Finished" in log
    assert "Finished" in capsys.readouterr().err  # the console log

    assert main(["train", config]) == 2  # the run exists ...
    assert main(["train", config, "--force", "--set", "train.max_steps=2"]) == 0  # ... --force starts over
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [2]
    assert main(["train", config, "--resume", "--set", "train.max_steps=4"]) == 0
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [2, 4]


def test_cli_info_shows_a_checkpoint(toy_run, capsys):
    assert main(["info", str(toy_run["run_dir"] / "best.pt")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["step"] == toy_run["summary"]["best_step"]
    assert shown["best_bleu"] == toy_run["summary"]["best_dev_bleu"]
    assert shown["config"]["model"]["embedding_size"] == 32
    assert shown["run"]["versions"]["torch"] == torch.__version__


def test_cli_subprocess_user_error_has_no_traceback(tmp_path: Path, tiny_config):
    config = write_config(tmp_path, {**tiny_config, "model": {**tiny_config["model"], "hiden": 3}})
    result = subprocess.run(
        [sys.executable, "-m", "seq2seq", "train", config],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seq2seq: error: unknown config key 'model.hiden'")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_autocast(toy_config, precision: str):
    toy_config["train"].update(precision=precision, max_steps=30, validate_every=30)
    trainer = Trainer(config_from_dict(toy_config))
    try:
        trainer.sampler.set_epoch(0)
        batch = collate([trainer.dataset[i] for i in next(iter(trainer.sampler))])
        with torch.autocast("cpu", dtype=trainer.autocast_dtype):
            logits, _ = trainer.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_out != 1)
        assert logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary["skipped_updates"] == 0 and summary["best_dev_bleu"] > 0


def test_max_epochs_ends_with_a_validation_and_a_checkpoint(toy_config):
    toy_config["train"].update(max_steps=None, max_epochs=2, validate_every=1000)
    summary = train(config_from_dict(toy_config))
    run_dir = Path(toy_config["train"]["run_dir"])
    assert summary["stop_reason"] == "reached train.max_epochs (2)" and summary["epochs"] == 2
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [summary["steps"]]
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["step"] == summary["steps"] and last["training_state"]["epoch"] == 2


def test_resuming_a_finished_run_trains_no_further(toy_config):
    toy_config["train"].update(max_steps=6, validate_every=3)
    train(config_from_dict(toy_config))
    run_dir = Path(toy_config["train"]["run_dir"])
    before = torch.load(run_dir / "last.pt", weights_only=True)
    summary = train(config_from_dict(toy_config), resume=True)
    after = torch.load(run_dir / "last.pt", weights_only=True)
    assert summary["steps"] == 6 and after["step"] == 6
    for name, tensor in before["model"].items():
        assert torch.equal(after["model"][name], tensor)


def test_resume_survives_a_half_written_record_and_refuses_another_model(toy_config, capsys):
    toy_config["train"].update(max_steps=4, validate_every=2)
    train(config_from_dict(toy_config))
    run_dir = Path(toy_config["train"]["run_dir"])
    with open(run_dir / "progress.jsonl", "a") as handle:
        handle.write('{"step": 5, "train_lo')  # the line a kill -9 cut short
    toy_config["train"]["max_steps"] = 6
    assert train(config_from_dict(toy_config), resume=True)["steps"] == 6
    assert [r["step"] for r in read_jsonl(run_dir / "progress.jsonl")] == [1, 2, 3, 4, 5, 6]
    config_file = write_config(run_dir.parent, {**toy_config, "model": {**toy_config["model"], "embedding_size": 16}})
    assert main(["train", config_file, "--resume", "--force"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("seq2seq: error: ") and "different model" in error
