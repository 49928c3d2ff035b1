"""Claims of the README and the docs that no other test checked, each checked here by what the code does:

1. every learning-rate schedule warms up linearly, then follows its formula, and its state survives a
   Ctrl-C and `--resume` (the same rates, decay state and weights, bit for bit, as an uninterrupted run);
2. the first Ctrl-C stops politely, a second one quits at once;
3. encoding the training corpus in several chunks by several worker processes gives, byte for byte, the
   cache one process gives;
4. SentencePiece is trained on a uniform, seeded sample of `tokenizer.input_sentence_size` lines;
5. resuming with another number of processes is refused with one clear line;
6. `train.accumulate_batches: N` makes one update of N batches, equal to one batch N times larger;
7. `train.early_stopping_patience` and `train.max_time` end a run;
8. bf16 decoding runs and scores like fp32.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    DATA,
    SUBPROCESS_ENV,
    assert_same_weights,
    checkpoint_copy,
    head,
    lines_written,
    make_toy_config,
    needs_native_bf16,
    regularised_toy_config,
    toy_pairs,
    toy_sentence,
    wait_until,
    write_config,
    write_parallel,
    write_toy_corpus,
    write_yaml,
)

import seq2seq.data
import seq2seq.tokenizer
import seq2seq.train
from seq2seq.checkpoint import load_checkpoint
from seq2seq.cli import main
from seq2seq.config import TokenizerConfig, config_from_dict
from seq2seq.data import collate, load_training_corpus
from seq2seq.metrics import bleu
from seq2seq.model import sequence_loss
from seq2seq.rundir import read_records
from seq2seq.textfiles import sample_lines
from seq2seq.tokenizer import UNK_ID, Tokenizer, build_tokenizer, train_sentencepiece
from seq2seq.train import StopRequest, prepared_run, train
from seq2seq.translate import Translator


def without_curves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing curves.png: 0.4 s per validation, and no test here looks at it (nothing else changes)."""
    monkeypatch.setattr(seq2seq.train, "plot_training_curves", lambda *args, **kwargs: None)


def unlearnable_dev(directory: Path) -> str:
    """A dev set whose references share no word with anything the model can say: dev BLEU stays 0 whatever
    the training does, so every validation after the first is one 'without improvement'."""
    src, _ = toy_pairs(4, seed=3)
    return write_parallel(directory / "toy" / "unlearnable", src, ["zzz qqq"] * len(src))


@contextlib.contextmanager
def ctrl_c_after_step(monkeypatch: pytest.MonkeyPatch, step: int):
    """Deliver a real SIGINT to this process right after the progress record of update `step` is written
    (log_every 1), as if Ctrl-C were pressed then: only the moment of delivery is arranged."""
    real = seq2seq.train.append_record

    def record_then_interrupt(path: Path, record: dict) -> None:
        real(path, record)
        if path.name == "progress.jsonl" and record["step"] == step:
            signal.raise_signal(signal.SIGINT)  # its Python handler (StopRequest's) runs before this returns

    with monkeypatch.context() as patch:
        patch.setattr(seq2seq.train, "append_record", record_then_interrupt)
        yield


# --- 1. learning-rate schedules, end to end ---------------------------------------------------------------

BASE_LR, WARMUP, MIN_LR = 0.01, 4, 1e-4
SCHEDULE_STEPS, VALIDATE_EVERY = 11, 2
PLATEAU = {"patience": 1, "decay_factor": 0.5}
KINDS = ["constant", "inverse_sqrt", "linear", "plateau"]


def plateau_scale(step: int) -> float:
    """The plateau scale at update `step` on the unlearnable dev set (BLEU 0 at every validation, patience 1).

    Validations at 2 (the first score: a best), 4 (one bad: within patience), 6 (two bad: decay, count reset),
    8 (one bad), 10 (two bad: decay); a decay at step s changes the rate from step s + 1.
    """
    return 1.0 if step <= 6 else 0.5 if step <= 10 else 0.25


def expected_lr(kind: str, step: int) -> float:
    """The README's schedules, written out: linear warm-up from 0, then the schedule, floored at min_lr."""
    if step < WARMUP:
        return BASE_LR * step / WARMUP
    after = {
        "constant": BASE_LR,
        "inverse_sqrt": BASE_LR * math.sqrt(WARMUP / step),
        "linear": BASE_LR * (SCHEDULE_STEPS - step) / (SCHEDULE_STEPS - WARMUP),
        "plateau": BASE_LR * plateau_scale(step),
    }[kind]
    return max(after, MIN_LR)


def schedule_config(directory: Path, corpus: dict, kind: str, run: str) -> dict:
    """Dropout and label smoothing on (every random stream matters on resume), a checkpoint every 2 updates,
    and for plateau (which needs one) the unlearnable dev set."""
    config = regularised_toy_config(directory, corpus, run, max_steps=SCHEDULE_STEPS)
    config["data"]["cache_dir"] = str(directory / "cache")  # the same SentencePiece model and encoded corpus
    config["data"]["dev"] = corpus["unlearnable"] if kind == "plateau" else None
    schedule = {"type": kind, "warmup_steps": WARMUP, "min_lr": MIN_LR, **(PLATEAU if kind == "plateau" else {})}
    config["train"].update(lr=BASE_LR, validate_every=VALIDATE_EVERY, schedule=schedule)
    return config


def run_record(run_dir: Path) -> dict:
    """What a run left: the rate and loss of each update, its validations, and last.pt."""
    progress = read_records(run_dir / "progress.jsonl")
    return {
        "steps": [p["step"] for p in progress],
        "lrs": [p["lr"] for p in progress],
        "losses": [p["train_loss"] for p in progress],
        "validations": [m["step"] for m in read_records(run_dir / "metrics.jsonl")],
        "last": torch.load(run_dir / "last.pt", weights_only=True),
    }


@pytest.fixture(scope="module")
def schedule_runs(tmp_path_factory) -> dict:
    """One uninterrupted run per schedule type, and what is needed to repeat it with a break."""
    directory = tmp_path_factory.mktemp("schedules")
    corpus = write_toy_corpus(directory) | {"unlearnable": unlearnable_dev(directory)}
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        without_curves(patch)
        for kind in KINDS:
            summary = train(config_from_dict(schedule_config(directory, corpus, kind, f"{kind}-whole")))
            assert summary["steps"] == SCHEDULE_STEPS
            runs[kind] = run_record(directory / f"{kind}-whole")
    return {"dir": directory, "corpus": corpus, "whole": runs}


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_warms_up_linearly_then_follows_its_formula(schedule_runs, kind: str):
    run = schedule_runs["whole"][kind]
    assert run["steps"] == list(range(1, SCHEDULE_STEPS + 1))
    expected = [expected_lr(kind, step) for step in run["steps"]]
    assert run["lrs"] == pytest.approx(expected, rel=1e-12, abs=0)
    assert run["lrs"][:WARMUP] == pytest.approx([BASE_LR * s / WARMUP for s in range(1, WARMUP + 1)], rel=1e-12)
    if kind == "linear":
        assert run["lrs"][-1] == MIN_LR  # (11 - 11) / 7 of the rate is below the floor
    if kind == "plateau":
        metrics = read_records(Path(schedule_runs["dir"]) / "plateau-whole" / "metrics.jsonl")
        assert [m["dev_bleu"] for m in metrics] == [0.0] * len(metrics)  # what plateau_scale assumes
        assert run["last"]["schedule"] == {"plateau_scale": 0.25, "best_score": 0.0, "bad_validations": 1}


def stop_and_resume(schedule_runs: dict, monkeypatch: pytest.MonkeyPatch, kind: str, stop_at: int) -> dict:
    """The run of `kind` stopped by Ctrl-C after update `stop_at`, then resumed to the end; what it left."""
    directory, corpus = schedule_runs["dir"], schedule_runs["corpus"]
    config = schedule_config(directory, corpus, kind, f"{kind}-stopped-at-{stop_at}")
    run_dir = Path(config["train"]["run_dir"])
    without_curves(monkeypatch)
    with ctrl_c_after_step(monkeypatch, stop_at):
        stopped = train(config_from_dict(config))
    assert stopped["stop_reason"] == "interrupted" and stopped["steps"] == stop_at
    at_break = torch.load(run_dir / "last.pt", weights_only=True)
    assert at_break["step"] == stop_at
    resumed = train(config_from_dict(config), resume=True)
    assert (
        resumed["steps"] == SCHEDULE_STEPS and resumed["stop_reason"] == f"reached train.max_steps ({SCHEDULE_STEPS})"
    )
    return run_record(run_dir) | {"at_break": at_break}


@pytest.mark.parametrize("kind", KINDS)
def test_schedule_survives_ctrl_c_and_resume(schedule_runs, monkeypatch, kind: str):
    """Stopped after update 9 (past warm-up, between validations; for plateau after one decay and with one
    bad validation counted), resumed: the same rates, schedule state, losses and weights as without a break."""
    whole = schedule_runs["whole"][kind]
    again = stop_and_resume(schedule_runs, monkeypatch, kind, stop_at=9)
    if kind == "plateau":  # the state at the break is not a fresh one: losing it would show
        assert again["at_break"]["schedule"] == {"plateau_scale": 0.5, "best_score": 0.0, "bad_validations": 1}
    assert again["steps"] == whole["steps"]
    assert again["lrs"] == whole["lrs"]
    assert again["validations"] == whole["validations"]
    assert again["last"]["schedule"] == whole["last"]["schedule"]
    assert again["losses"] == whole["losses"]
    assert_same_weights(whole["last"]["model"], again["last"]["model"])


def test_plateau_survives_ctrl_c_at_a_validation_step(schedule_runs, monkeypatch):
    """Ctrl-C during update 8, a validation step: the validation due there must still count on resume.

    Fails (see the report): Trainer._update saves without validating when interrupted and the resumed run
    validates next at step 10, so the dev score of step 8 is never taken, the plateau schedule misses one
    bad validation and decays later than the uninterrupted run (metrics.jsonl and best.pt differ too).
    """
    whole = schedule_runs["whole"]["plateau"]
    again = stop_and_resume(schedule_runs, monkeypatch, "plateau", stop_at=8)
    assert again["validations"] == whole["validations"], "the validation due at the interrupted step was lost"
    assert again["last"]["schedule"] == whole["last"]["schedule"]
    assert again["lrs"] == whole["lrs"]
    assert_same_weights(whole["last"]["model"], again["last"]["model"])


# --- 2. Ctrl-C twice ----------------------------------------------------------------------------------


def test_first_signal_asks_for_a_stop_and_the_second_quits(caplog):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)  # the first of either signal: a polite request, no exception
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second: at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert "press Ctrl-C again to quit now" in caplog.text


# The CLI with the save of last.pt made slow (a large model on a slow disk): the polite stop that the first
# Ctrl-C asks for would take two minutes, so quitting within seconds can only be the second Ctrl-C's doing.
SLOW_SAVE_OF_LAST_PT = r"""
import sys, time
import torch

real_save = torch.save

def slow_save(obj, handle, *args, **kwargs):
    if str(getattr(handle, "name", "")).endswith(".last.pt.tmp"):
        print("saving last.pt slowly", file=sys.stderr, flush=True)
        time.sleep(120)
    return real_save(obj, handle, *args, **kwargs)

torch.save = slow_save
from seq2seq.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_second_ctrl_c_quits_at_once_with_one_line(tmp_path: Path):
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["data"]["dev"] = None
    config["train"].update(max_steps=10**6, validate_every=10**6)  # no save before the interruption
    config_file = write_yaml(tmp_path / "config.yaml", config)
    run_dir, stderr = tmp_path / "run", tmp_path / "train.stderr"
    with open(stderr, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_SAVE_OF_LAST_PT, "train", config_file],
            cwd=tmp_path,
            env=SUBPROCESS_ENV,
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )
    try:
        wait_until(lambda: lines_written(run_dir / "progress.jsonl") > 0, process, stderr, "a training step")
        process.send_signal(signal.SIGINT)
        wait_until(lambda: "saving last.pt slowly" in stderr.read_text(), process, stderr, "the polite stop's save")
        second = time.monotonic()
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=60)
        quit_after = time.monotonic() - second
    finally:
        process.kill()
        process.wait()
    said = stderr.read_text()
    assert status == 130, said
    assert quit_after < 20, f"{quit_after:.1f} s after the second Ctrl-C"  # the save alone would take 120 s
    assert "Stop requested" in said and "Traceback" not in said
    assert said.strip().splitlines()[-1] == "seq2seq: interrupted"
    assert "To continue this run" not in said  # it did not finish the polite stop
    assert not (run_dir / "last.pt").exists() and not (run_dir / "summary.json").exists()
    assert not (run_dir / ".last.pt.tmp").exists()  # the interrupted save leaves no temporary file


# --- 3. encoding the corpus: chunks and worker processes ------------------------------------------------


def cache_entry_files(cache_dir: Path) -> dict[str, bytes]:
    """Every file of the one encoded-corpus entry in `cache_dir`, by name."""
    (entry,) = [p for p in cache_dir.glob("corpus-*") if p.is_dir() and not p.name.endswith(".tmp")]
    return {p.name: p.read_bytes() for p in sorted(entry.iterdir()) if p.is_file()}


@pytest.mark.slow  # a pool of worker processes
def test_several_workers_and_chunks_write_the_cache_one_worker_writes(tmp_path: Path, tokenizer, monkeypatch):
    src, tgt = head(DATA / "train.es", 150), head(DATA / "train.en", 150)
    src[3], tgt[70] = "", "   "  # empty pairs, and long ones (below), are filtered and counted per chunk
    write_parallel(tmp_path / "corpus", src, tgt)
    paths, digests = (tmp_path / "corpus.es", tmp_path / "corpus.en"), ("es-digest", "en-digest")
    limits = (60, 60)  # pieces: some of these Bible verses are longer

    real_chunks, real_encode = seq2seq.data.parallel_chunks, seq2seq.data.encode_and_filter
    chunk_sizes: list[int] = []
    encoded_here: list[int] = []  # chunks encoded in this process (not by a worker)

    def counted_chunks(*args, size: int):
        for chunk in real_chunks(*args, size=size):
            chunk_sizes.append(len(chunk[0]))
            yield chunk

    def encode_here(src_lines, *args):
        encoded_here.append(len(src_lines))
        return real_encode(src_lines, *args)

    monkeypatch.setattr(seq2seq.data, "encode_and_filter", encode_here)
    caches = {}
    for name, workers, size in (("one", 1, seq2seq.data.CHUNK_LINES), ("chunks", 1, 16), ("workers", 2, 16)):
        monkeypatch.setattr(seq2seq.data, "parallel_chunks", functools.partial(counted_chunks, size=size))
        chunk_sizes.clear()
        encoded_here.clear()
        corpus, stats = load_training_corpus(paths, digests, tokenizer, *limits, tmp_path / name, workers)
        caches[name] = cache_entry_files(tmp_path / name)
        assert stats["pairs"] == 150 and stats["skipped_empty"] == 2 and 0 < stats["skipped_too_long"]
        assert stats["kept"] == len(corpus) == 150 - 2 - stats["skipped_too_long"]
        if name == "one":
            assert chunk_sizes == [150]
        else:
            assert chunk_sizes == [16] * 9 + [6]  # several chunks, the last one short
        assert encoded_here == ([] if workers > 1 else chunk_sizes)  # the pool did the work, or this process
    assert {"src_ids.bin", "tgt_ids.bin", "src_offsets.npy", "tgt_offsets.npy", "stats.json"} <= set(caches["one"])
    assert caches["chunks"] == caches["one"]
    assert caches["workers"] == caches["one"]


# --- 4. tokenizer.input_sentence_size --------------------------------------------------------------------

SAMPLE_SIZE = 30  # of 60 Spanish + 60 English lines


@pytest.fixture
def spied_sentencepiece(monkeypatch) -> list[list[str]]:
    """The lines each SentencePiece training gets (the training itself runs as usual)."""
    calls: list[list[str]] = []
    real = seq2seq.tokenizer.train_sentencepiece

    def spy(lines, *args, **kwargs):
        lines = list(lines)
        calls.append(lines)
        return real(lines, *args, **kwargs)

    monkeypatch.setattr(seq2seq.tokenizer, "train_sentencepiece", spy)
    return calls


def test_sentencepiece_is_trained_on_a_seeded_sample_of_the_whole_corpus(tmp_path: Path, spied_sentencepiece):
    src, tgt = toy_pairs(60)  # distinct lines; English has letters Spanish lacks (w, f, x, b)
    write_parallel(tmp_path / "corpus", src, tgt)
    paths, digests = [(tmp_path / "corpus.es", tmp_path / "corpus.en")], [("es-digest", "en-digest")]
    config = TokenizerConfig(vocab_size=40, input_sentence_size=SAMPLE_SIZE)

    def model(seed: int, cache: str, settings: TokenizerConfig = config) -> bytes:
        tokenizer = build_tokenizer(paths, digests, settings, tmp_path / cache, seed)
        return tokenizer.src_model

    first = model(1, "cache-a")
    sample = spied_sentencepiece[-1]
    assert len(sample) == SAMPLE_SIZE and len(set(sample)) == SAMPLE_SIZE
    assert set(sample) <= set(src) | set(tgt)
    # From the whole joint corpus (both files), not its first lines: those are Spanish lines only.
    assert sample != src[:SAMPLE_SIZE]
    assert any(line in tgt for line in sample) and any(line in src[SAMPLE_SIZE:] for line in sample)
    # The model is SentencePiece's on exactly that sample, and it shows: it knows English letters, which a
    # model of the first lines maps to <unk>.
    assert first == train_sentencepiece(sample, config, 1)
    assert UNK_ID not in Tokenizer(first, first).encode_src(["two fox big"])[0]
    head_only = train_sentencepiece(src[:SAMPLE_SIZE], config, 1)
    assert UNK_ID in Tokenizer(head_only, head_only).encode_src(["two fox big"])[0]
    # Deterministic for a seed (a fresh cache: trained again), another sample for another seed.
    assert model(1, "cache-b") == first and spied_sentencepiece[-1] == sample
    assert model(2, "cache-c") != first and spied_sentencepiece[-1] != sample
    # The whole corpus when the size allows it: another model.
    whole = model(1, "cache-d", TokenizerConfig(vocab_size=40, input_sentence_size=1000))
    assert sorted(spied_sentencepiece[-1]) == sorted(src + tgt) and whole != first


def test_the_sample_is_uniform_over_the_lines(tmp_path: Path):
    """Over 400 seeds, lines early and late in the corpus (and in either file) are drawn equally often."""
    src, tgt = toy_pairs(60)
    write_parallel(tmp_path / "corpus", src, tgt)
    lines = src + tgt
    counts = dict.fromkeys(lines, 0)
    seeds = 400
    for seed in range(seeds):
        for line in sample_lines([tmp_path / "corpus.es", tmp_path / "corpus.en"], SAMPLE_SIZE, seed):
            counts[line] += 1
    share = SAMPLE_SIZE / len(lines)  # each line's chance to be drawn: 1/4, 100 draws in 400 samples
    quarters = [sum(counts[line] for line in lines[i : i + 30]) / (30 * seeds) for i in range(0, 120, 30)]
    assert quarters == pytest.approx([share] * 4, abs=0.02)  # a sd of 0.004 each
    assert all(0.5 * share * seeds < count < 1.5 * share * seeds for count in counts.values())  # sd 8.7 around 100


# --- 5. resuming with another number of processes ----------------------------------------------------------


def test_resuming_with_another_number_of_processes_is_refused(tmp_path: Path, toy_config, capfd):
    toy_config["data"]["dev"] = None
    toy_config["train"].update(max_steps=2, validate_every=2)
    config_file = write_config(tmp_path, toy_config)
    assert main(["train", config_file]) == 0
    run_dir = Path(toy_config["train"]["run_dir"])
    # Make last.pt what a run of 2 processes writes: world size 2, one torch random state per process.
    payload = torch.load(run_dir / "last.pt", weights_only=True)
    payload["training_state"]["world_size"] = 2
    payload["rng"]["torch"] = payload["rng"]["torch"] * 2
    torch.save(payload, run_dir / "last.pt")
    before = (run_dir / "last.pt").read_bytes(), (run_dir / "progress.jsonl").read_bytes()
    capfd.readouterr()

    assert main(["train", config_file, "--resume", "--set", "train.max_steps=4"]) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and captured.out == ""
    assert [line for line in lines if line.startswith("seq2seq: error:")] == [lines[-1]]
    assert lines[-1] == (
        f"seq2seq: error: {run_dir} was trained with 2 process(es), not 1: resume with the same number "
        "(the position in the data depends on it)"
    )
    assert ((run_dir / "last.pt").read_bytes(), (run_dir / "progress.jsonl").read_bytes()) == before  # no step
    assert load_checkpoint(run_dir / "last.pt")["training_state"]["world_size"] == 2


# --- 6. train.accumulate_batches ---------------------------------------------------------------------------


def accumulation_config(directory: Path, accumulate: int) -> dict:
    config = make_toy_config(directory, write_toy_corpus(directory))
    config["data"]["dev"] = None
    config["train"].update(
        run_dir=str(directory / f"accumulate-{accumulate}"),
        accumulate_batches=accumulate,
        clip_grad_norm=None,  # clipping would rescale the two gradients differently
        batch_tokens=40,  # 5 batches an epoch
        max_steps=None,
        max_epochs=1,
        validate_every=1000,
    )
    return config


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


def test_accumulated_batches_give_the_gradient_of_their_union(tmp_path: Path):
    """`_train_step` on two batches (what accumulate_batches 2 hands it) against one batch holding both.

    The loss is the mean per target token of each batch, and accumulation averages the batches' losses:
    with equal target tokens in each batch that is exactly the mean per token of their union, i.e. one batch
    twice as large. With unequal counts it is the mean of the two batch means (each batch weighs the same,
    whatever its tokens), as DDP averages processes: checked too, so that the rule is pinned.
    """
    with prepared_run(config_from_dict(accumulation_config(tmp_path, 2))) as trainer:
        model, dataset = trainer.model, trainer.data.dataset
        by_length: dict[int, list] = {}
        for index in range(len(dataset)):
            pair = dataset[index]
            by_length.setdefault(len(pair[1]), []).append(pair)  # target pieces + EOS
        # 4 + 7 and 5 + 6 target tokens: equal totals, different lengths (padding in the union)
        first, second = [by_length[4][0], by_length[7][0]], [by_length[5][0], by_length[6][0]]
        start = {name: tensor.clone() for name, tensor in model.state_dict().items()}

        loss, _ = trainer._train_step([collate(first), collate(second)])
        accumulated = gradients(model)
        model.load_state_dict(start)
        model.zero_grad(set_to_none=True)
        union_loss = sequence_loss(model, collate(first + second))
        union_loss.backward()
        assert loss.item() == pytest.approx(union_loss.item(), rel=1e-6)
        union = gradients(model)
        assert any(g.abs().max() > 0 for g in union.values())
        for name, gradient in union.items():
            torch.testing.assert_close(accumulated[name], gradient, rtol=1e-4, atol=1e-7, msg=name)

        # Unequal token counts (4 + 4 against 7 + 7): the mean of the two batches' mean gradients.
        short, long = [by_length[4][1], by_length[4][2]], [by_length[7][1], by_length[7][2]]
        singles = []
        for batch in (short, long):
            model.load_state_dict(start)
            model.zero_grad(set_to_none=True)
            sequence_loss(model, collate(batch)).backward()
            singles.append(gradients(model))
        model.load_state_dict(start)
        trainer._train_step([collate(short), collate(long)])
        accumulated = gradients(model)
        for name in accumulated:
            mean = (singles[0][name] + singles[1][name]) / 2
            torch.testing.assert_close(accumulated[name], mean, rtol=1e-4, atol=1e-7, msg=name)


def test_accumulate_batches_makes_one_update_of_each_n_consecutive_batches(tmp_path: Path):
    """A run with accumulate_batches 2 ends with the weights of updates on batches (1, 2), (3, 4), ... of the
    epoch, the last one alone when their number is odd."""
    with prepared_run(config_from_dict(accumulation_config(tmp_path, 2))) as trainer:
        batches = trainer.data.sampler.rank_batches(0)
        summary = trainer.run()
        accumulated = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    assert len(batches) % 2 == 1  # an odd number: the last update has one batch
    assert summary["steps"] == math.ceil(len(batches) / 2) and summary["epochs"] == 1
    with prepared_run(config_from_dict(accumulation_config(tmp_path, 1))) as replay:
        assert replay.data.sampler.rank_batches(0) == batches  # the same epoch
        dataset = replay.data.dataset
        for start in range(0, len(batches), 2):
            group = [collate([dataset[i] for i in batch]) for batch in batches[start : start + 2]]
            assert replay._train_step(group) is not None
        assert_same_weights(accumulated, replay.model.state_dict())


# --- 7. early stopping and max_time ----------------------------------------------------------------------


def test_early_stopping_ends_the_run_after_patience_validations_without_a_better_bleu(
    tmp_path: Path, toy_config, monkeypatch
):
    without_curves(monkeypatch)
    toy_config["data"]["dev"] = unlearnable_dev(tmp_path)  # dev BLEU 0 at every validation
    toy_config["train"].update(max_steps=1000, validate_every=2, early_stopping_patience=2)
    summary = train(config_from_dict(toy_config))
    run_dir = Path(toy_config["train"]["run_dir"])
    # Step 2 sets the best (0 beats nothing yet); 4 and 6 do not beat it: two validations without a better one.
    assert summary["stop_reason"] == "early stopping: dev BLEU did not improve for 2 validations"
    assert summary["steps"] == 6 and summary["best_step"] == 2 and not summary["interrupted"]
    assert [m["step"] for m in read_records(run_dir / "metrics.jsonl")] == [2, 4, 6]
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 6


def test_max_time_ends_the_run_and_counts_across_a_resume(tmp_path: Path, toy_config):
    toy_config["data"]["dev"] = None
    toy_config["train"].update(max_steps=None, max_time="2s", validate_every=10**6, log_every=100)
    started = time.monotonic()
    summary = train(config_from_dict(toy_config))
    took = time.monotonic() - started
    run_dir = Path(toy_config["train"]["run_dir"])
    assert summary["stop_reason"] == "reached train.max_time (2s)" and not summary["interrupted"]
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["step"] == summary["steps"] > 10  # a toy update takes milliseconds
    assert 2.0 <= last["training_state"]["elapsed"] < 12  # not a timing test: it stopped, soon after 2 s
    assert took < 60
    # The training time is kept in the checkpoint: resumed with the same limit, the run is already at it.
    again = train(config_from_dict(toy_config), resume=True)
    assert again["steps"] == summary["steps"] and again["stop_reason"] == "reached train.max_time (2s)"


# --- 8. bf16 decoding ------------------------------------------------------------------------------------

# Tolerance: bf16 keeps 8 significant bits (a relative rounding of 2^-9 = 0.2%) in the autocast matmuls,
# which moves a logit of size ~10 by a few hundredths. The toy model has memorised the dev set, so its
# choices win by margins far larger than that: the translations must be the same (at most one sentence in
# ten may differ, on unseen sentences too) and each best translation's log-probability within 0.1 nats.


@needs_native_bf16
@pytest.mark.parametrize("beam", [1, 5], ids=["greedy", "beam5"])
def test_bf16_decoding_scores_like_fp32(toy_model, corpus, beam: int):
    sources, references = corpus
    unseen = [toy_sentence(words, seed=words) for words in range(2, 12)]  # lengths the model never saw
    found = {}
    for precision in ("fp32", "bf16"):
        translator = Translator(str(toy_model["checkpoint"]), {"precision": precision, "beam": beam}, device="cpu")
        assert translator.options.precision == precision
        found[precision] = translator.translate(sources + unseen)
    fp32, bf16 = found["fp32"], found["bf16"]
    scores = {p: bleu([t.best.text for t in found[p][: len(sources)]], references).value for p in found}
    assert scores["fp32"] >= 90  # the memorised dev set
    assert abs(scores["bf16"] - scores["fp32"]) <= 1.0
    same = [a.best.text == b.best.text for a, b in zip(fp32, bf16)]
    assert sum(same) >= 0.9 * len(same)
    gaps = [abs(a.best.log_prob - b.best.log_prob) for a, b, s in zip(fp32, bf16, same) if s]
    assert max(gaps) < 0.1
    assert max(gaps) > 0, "bf16 gave fp32's log-probabilities to the bit: was it used at all?"


@needs_native_bf16
def test_evaluate_with_precision_bf16_reports_fp32_bleu(toy_model, tmp_path: Path, capsys):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    reports = {}
    for precision in ("fp32", "bf16"):
        report = tmp_path / f"{precision}.json"
        arguments = ["evaluate", str(checkpoint), "--src", str(toy_model["src"]), "--ref", str(toy_model["ref"])]
        arguments += ["--precision", precision, "--output", str(tmp_path / f"{precision}.hyp"), "--report"]
        assert main([*arguments, str(report)]) == 0
        reports[precision] = json.loads(report.read_text())
    capsys.readouterr()
    assert reports["bf16"]["decoding"]["precision"] == "bf16"
    assert reports["fp32"]["bleu"] >= 90
    assert abs(reports["bf16"]["bleu"] - reports["fp32"]["bleu"]) <= 1.0
