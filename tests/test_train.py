"""Training (seq2seq/train.py): a run learns, writes its run directory, reproduces, resumes exactly,
refuses a changed config, skips non-finite updates and stops cleanly when it diverges."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    LOG_LINE,
    TOY_VOCAB,
    assert_same_weights,
    make_toy_config,
    needs_native_bf16,
    regularised_toy_config,
    toy_pairs,
    write_config,
    write_lines,
    write_parallel,
    write_toy_corpus,
)

from seq2seq.attention import ATTENTION_TYPES
from seq2seq.checkpoint import load_checkpoint, load_trained
from seq2seq.cli import main
from seq2seq.config import DecodeConfig, config_from_dict, load_config
from seq2seq.data import EncodedCorpus, ParallelDataset, collate
from seq2seq.device import autocast
from seq2seq.errors import UserError
from seq2seq.metrics import bleu
from seq2seq.model import sequence_loss
from seq2seq.rundir import read_records
from seq2seq.search import decode_lines
from seq2seq.tokenizer import UNK_ID
from seq2seq.train import MAX_SKIPPED_IN_A_ROW, prepared_run, train

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
    losses = [p["train_loss"] for p in read_records(run_dir / "progress.jsonl")]
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
    # The dev set is the training set: memorised by the end, and better predicted at each validation.
    assert metrics[-1]["dev_bleu"] == pytest.approx(100.0)
    assert metrics[1]["dev_loss"] < metrics[0]["dev_loss"] and metrics[-1]["dev_loss"] < 0.05
    assert all(m["dev_ppl"] == pytest.approx(math.exp(m["dev_loss"])) for m in metrics)
    # best.pt is the first validation with the highest dev BLEU (a tie is no improvement)
    best = max(m["dev_bleu"] for m in metrics)
    assert best == toy_run["summary"]["best_dev_bleu"]
    assert toy_run["summary"]["best_step"] == next(m["step"] for m in metrics if m["dev_bleu"] == best)
    assert torch.load(run_dir / "best.pt", weights_only=True)["step"] == toy_run["summary"]["best_step"]

    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in run_dir.glob("step-*.pt")] == [f"step-{OVERFIT_STEPS:07d}.pt"]  # keep_checkpoints: 1
    assert json.loads((run_dir / "summary.json").read_text()) == toy_run["summary"]
    assert not list(run_dir.glob(".*.tmp"))


def test_best_checkpoint_alone_translates(toy_run):
    path = toy_run["run_dir"] / "best.pt"
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == toy_run["summary"]["best_step"] and "optimizer" not in payload
    trained = load_trained(path)
    model, tokenizer = trained.model, trained.tokenizer
    assert trained.step == payload["step"] and trained.config == config_from_dict(toy_run["config"])

    prefix = toy_run["config"]["data"]["dev"]
    sources = Path(f"{prefix}.es").read_text().splitlines()
    references = Path(f"{prefix}.en").read_text().splitlines()
    greedy = DecodeConfig(beam=1)
    hypotheses = [best[0] for best in decode_lines(model, tokenizer, sources + [""], torch.device("cpu"), greedy)]
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
    losses = [p["train_loss"] for p in read_records(run_dir / "progress.jsonl")]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    # The one validation (at the end) is the best so far: summary, metrics.jsonl and best.pt agree on it.
    (record,) = read_records(run_dir / "metrics.jsonl")
    assert record["step"] == 6 and summary["best_step"] == 6
    assert summary["best_dev_bleu"] == record["dev_bleu"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["step"] == 6 and best["best_bleu"] == record["dev_bleu"]
    # The dev set too is better predicted than by a uniform guess over the 300 pieces.
    assert math.isfinite(record["dev_loss"]) and record["dev_loss"] < math.log(300)


# --- reproducibility and resume --------------------------------------------------------------------


def losses_and_weights(run_dir: Path) -> tuple[list[float], dict]:
    losses = [p["train_loss"] for p in read_records(run_dir / "progress.jsonl")]
    return losses, torch.load(run_dir / "last.pt", weights_only=True)["model"]


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


@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=needs_native_bf16), "fp16"])
def test_mixed_precision_trains_with_autocast(toy_config, precision: str):
    toy_config["train"].update(precision=precision, max_steps=30, validate_every=30)
    with prepared_run(config_from_dict(toy_config)) as trainer:
        trainer.data.sampler.set_epoch(0)
        batch = collate([trainer.data.dataset[i] for i in next(iter(trainer.data.sampler))])
        with autocast("cpu", precision):
            logits = trainer.model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, batch.tgt_out != 1)
        assert logits.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        summary = trainer.run()
    assert summary["skipped_updates"] == 0 and summary["best_dev_bleu"] > 0


def test_max_epochs_ends_with_a_validation_and_a_checkpoint(toy_config):
    toy_config["train"].update(max_steps=None, max_epochs=2, validate_every=1000)
    summary = train(config_from_dict(toy_config))
    run_dir = Path(toy_config["train"]["run_dir"])
    assert summary["stop_reason"] == "reached train.max_epochs (2)" and summary["epochs"] == 2
    records = read_records(run_dir / "metrics.jsonl")
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
    assert [r["step"] for r in read_records(run_dir / "progress.jsonl")] == [1, 2, 3, 4, 5, 6]
    config_file = write_config(run_dir.parent, {**toy_config, "model": {**toy_config["model"], "embedding_size": 16}})
    assert main(["train", config_file, "--resume", "--force"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"seq2seq: error: {run_dir / 'last.pt'} holds a different model or optimizer (")
    assert error.endswith("): start this config in a new run directory instead of resuming")


def test_resume_of_another_configs_run_goes_ahead_with_force(tmp_path: Path, toy_config, capfd):
    toy_config["train"].update(max_steps=2, validate_every=2)
    train(config_from_dict(toy_config))
    toy_config["train"].update(lr=0.02, max_steps=3)
    config = write_config(tmp_path, toy_config)
    assert main(["train", config, "--resume"]) == 2
    assert "holds a run of a different config" in capfd.readouterr().err
    assert main(["train", config, "--resume", "--force"]) == 0
    run_dir = Path(toy_config["train"]["run_dir"])
    assert f"Resumed {run_dir} at step 2 " in capfd.readouterr().err
    assert load_checkpoint(run_dir / "last.pt")["config"]["train"]["lr"] == 0.02


# --- numerical faults --------------------------------------------------------------------------------


def test_non_finite_batches_are_skipped_and_counted(tmp_path: Path, caplog):
    src, tgt = toy_pairs(30)
    src[0] += " raro"  # the only sentence with this word; its embedding will be NaN
    corpus = {"train": write_parallel(tmp_path / "nan" / "train", src, tgt), "dev": None}
    data = make_toy_config(tmp_path, corpus)
    data["tokenizer"]["vocab_size"] = TOY_VOCAB + 1
    data["train"].update(max_steps=9, validate_every=9)
    with prepared_run(config_from_dict(data)) as trainer:
        raro = trainer.data.tokenizer.src.piece_to_id("▁raro")
        assert raro != UNK_ID
        with torch.no_grad():
            trainer.model.encoder.embedding.weight[raro] = float("nan")
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        batches = [b for epoch in range(9) for b in trainer.data.sampler.rank_batches(epoch)][:9]
        skipped_steps = [step for step, batch in enumerate(batches, start=1) if 0 in batch]
        assert 2 <= len(skipped_steps) < 9
        summary = trainer.run()
    assert summary["steps"] == 9 and summary["stop_reason"] == "reached train.max_steps (9)"
    assert summary["skipped_updates"] == len(skipped_steps)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_updates"] == len(skipped_steps)
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warnings == [
        f"Step {step}: non-finite loss or gradient, update skipped ({count} so far)"
        for count, step in enumerate(skipped_steps, start=1)
    ]
    progress = read_records(tmp_path / "run" / "progress.jsonl")
    assert [p["step"] for p in progress] == [s for s in range(1, 10) if s not in skipped_steps]
    assert all(torch.isfinite(torch.tensor(p["train_loss"])) for p in progress)
    # The good steps trained; the NaN stayed where it was and spread nowhere.
    weights = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert not torch.equal(weights["decoder.embedding.weight"], before["decoder.embedding.weight"])
    embedding = weights["encoder.embedding.weight"]
    assert embedding[raro].isnan().all()
    embedding[raro] = 0.0
    assert all(tensor.isfinite().all() for tensor in weights.values()), "NaN spread into the weights"


DIVERGE = ["--set", "train.lr=1e38", "--set", "train.clip_grad_norm=null", "--set", "train.max_steps=100"]


def test_divergence_stops_with_one_line_naming_the_last_checkpoint(tmp_path: Path, toy_config, capfd):
    toy_config["train"].update(max_steps=4, validate_every=4)
    config = write_config(tmp_path, toy_config)
    run_dir = Path(toy_config["train"]["run_dir"])
    assert main(["train", config]) == 0
    capfd.readouterr()
    # An absurd learning rate (allowed by --force on resume): one update to weights near the float32
    # limit, then every loss overflows.
    assert main(["train", config, "--resume", "--force", *DIVERGE]) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert [line for line in lines if line.startswith("seq2seq: error:")] == [lines[-1]]
    assert lines[-1] == (
        f"seq2seq: error: {MAX_SKIPPED_IN_A_ROW} updates in a row had a non-finite loss or gradient: the run "
        f"diverged; lower train.lr or set train.clip_grad_norm (last good checkpoint: {run_dir / 'last.pt'})"
    )
    skipped = [line for line in lines if "update skipped" in line]
    assert len(skipped) == MAX_SKIPPED_IN_A_ROW and f"({MAX_SKIPPED_IN_A_ROW} so far)" in skipped[-1]
    assert all(LOG_LINE.match(line) for line in lines[:-1])
    load_trained(run_dir / "last.pt")  # still a whole, loadable checkpoint


def test_last_good_checkpoint_of_a_divergence_is_good(tmp_path: Path, toy_config):
    toy_config["train"].update(max_steps=4, validate_every=4)
    train(config_from_dict(toy_config))
    diverging = {**toy_config, "train": {**toy_config["train"], "lr": 1e38, "clip_grad_norm": None, "max_steps": 100}}
    with pytest.raises(UserError, match="last good checkpoint"):
        train(config_from_dict(diverging), resume=True, force=True)
    path = Path(toy_config["train"]["run_dir"]) / "last.pt"
    payload = load_checkpoint(path)
    assert payload["training_state"]["skipped_in_a_row"] == 0, f"saved at step {payload['step']}, inside the streak"
    trained = load_trained(path)
    model, tokenizer = trained.model, trained.tokenizer
    prefix = toy_config["data"]["train"]
    src = tokenizer.encode_src(Path(f"{prefix}.es").read_text().splitlines())
    tgt = tokenizer.encode_tgt(Path(f"{prefix}.en").read_text().splitlines())
    dataset = ParallelDataset(EncodedCorpus.from_lists(src, tgt))
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        assert sequence_loss(model, batch).isfinite()


def test_resume_log_of_a_run_without_dev_set_claims_no_bleu(tmp_path: Path, toy_config, caplog):
    toy_config["data"]["dev"] = None
    toy_config["train"].update(max_steps=2, validate_every=2)
    train(config_from_dict(toy_config))
    toy_config["train"]["max_steps"] = 3
    train(config_from_dict(toy_config), resume=True)
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Resumed")]
    assert len(resumed) == 1 and "at step 2" in resumed[0]
    assert "BLEU" not in resumed[0], resumed[0]


def test_resume_from_a_weights_only_checkpoint_is_a_user_error(tmp_path: Path, toy_config, capfd):
    toy_config["train"].update(max_steps=2, validate_every=2)
    config = write_config(tmp_path, toy_config)
    assert main(["train", config]) == 0
    run_dir = Path(toy_config["train"]["run_dir"])
    shutil.copyfile(run_dir / "best.pt", run_dir / "last.pt")  # "start again from the best one"
    capfd.readouterr()
    assert main(["train", config, "--resume", "--set", "train.max_steps=4"]) == 2
    error = capfd.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"seq2seq: error: {run_dir / 'last.pt'} holds no training state (optimizer, schedule, training_state, rng "
        "missing): it cannot be resumed from; start a new run, or restore the last.pt the run wrote"
    )


def _resident_mib() -> float:
    """This process's resident memory, MiB (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_keeps_freed_large_blocks_for_reuse_instead_of_unmapping_them(monkeypatch):
    """With keep_freed_memory (what a CPU training run asks for) a freed 200 MiB tensor stays in the process for
    the next step's tensors; with glibc's defaults it is unmapped at once. SEQ2SEQ_KEEP_FREED_MEMORY=0 opts out."""
    from seq2seq import allocator

    def resident_after_freeing() -> float:
        block = torch.ones(50 * 2**20)  # 200 MiB, touched
        del block
        return _resident_mib()

    try:
        allocator.restore_default()
        before = _resident_mib()
        assert resident_after_freeing() < before + 50  # unmapped
        assert allocator.keep_freed_memory() is True
        assert resident_after_freeing() > before + 150  # kept for reuse
        allocator.restore_default()
        monkeypatch.setenv("SEQ2SEQ_KEEP_FREED_MEMORY", "0")
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.restore_default()
