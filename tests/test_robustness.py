"""Robustness: bad inputs fail with one line and status 2; runs survive kill -9, SIGTERM, Ctrl-C,
a crash while a checkpoint is written and a diverging loss, and resume bit for bit."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TOY_VOCAB, make_toy_config, toy_pairs, write_lines, write_parallel, write_toy_corpus
from test_train import assert_same_weights, regularised_toy_config, write_config

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.cli import main
from seq2seq.config import config_from_dict, config_to_dict
from seq2seq.data import EncodedCorpus, ParallelDataset, collate
from seq2seq.errors import UserError
from seq2seq.model import load_trained
from seq2seq.plots import read_jsonl
from seq2seq.tokenizer import UNK_ID
from seq2seq.train import MAX_BAD_STEPS_IN_A_ROW, Trainer, sequence_loss, train

LOG_LINE = re.compile(r"\d\d:\d\d:\d\d ")  # the console log format of seq2seq.cli.setup_logging


# --- bad inputs through the command line --------------------------------------------------------------
#
# Each case builds the arguments from tmp_path and the tiny config (200 real pairs) and names the
# substrings the one error line must hold ({tmp} stands for tmp_path). test_train.py's CLI_ERRORS
# already covers: unknown key, wrong type, model.dropout=1.5 (via --set), missing config file,
# misaligned training corpus, an existing run without --resume, --resume with no run, `info` on a text file.


def train_args(tmp_path: Path, config: dict, *extra: str) -> list[str]:
    return ["train", write_config(tmp_path, config), *extra]


def setting(key: str, value) -> Callable[[Path, dict], list[str]]:
    """A case that sets the dotted config `key` to `value` (sections created as needed)."""

    def make(tmp_path: Path, config: dict) -> list[str]:
        *sections, last = key.split(".")
        node = config
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
        return train_args(tmp_path, config)

    return make


def overrides(*assignments: str) -> Callable[[Path, dict], list[str]]:
    """A case that passes `--set` assignments on the command line."""
    return lambda tmp_path, config: train_args(tmp_path, config, *(a for s in assignments for a in ("--set", s)))


def corpus_file(config: dict, split: str, lang: str) -> Path:
    return Path(f"{config['data'][split]}.{lang}")


def missing_training_prefix(tmp_path: Path, config: dict) -> list[str]:
    config["data"]["train"] = str(tmp_path / "nowhere" / "train")
    return train_args(tmp_path, config)


def missing_target_side(tmp_path: Path, config: dict) -> list[str]:
    corpus_file(config, "train", "en").unlink()
    return train_args(tmp_path, config)


def misaligned_dev(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "dev", "en")
    write_lines(path, path.read_text(encoding="utf-8").splitlines()[:-1])
    return train_args(tmp_path, config)


def invalid_utf8_line_7(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "train", "en")
    lines = path.read_bytes().split(b"\n")
    lines[6] = "café olé".encode("latin-1")  # é is one byte in Latin-1: byte 4 of the line
    path.write_bytes(b"\n".join(lines))
    return train_args(tmp_path, config)


def invalid_utf8_in_gzip(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "train", "es")
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"\xff\xfe broken"
    Path(f"{path}.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    path.unlink()
    return train_args(tmp_path, config)


def not_gzip(tmp_path: Path, config: dict) -> list[str]:
    path = corpus_file(config, "train", "en")
    path.rename(f"{path}.gz")  # plain text under a .gz name
    return train_args(tmp_path, config)


def all_lines_empty(tmp_path: Path, config: dict) -> list[str]:
    for lang in ("es", "en"):
        write_lines(corpus_file(config, "train", lang), [""] * 20)
    return train_args(tmp_path, config)


def source_side_empty(tmp_path: Path, config: dict) -> list[str]:
    write_lines(corpus_file(config, "train", "es"), ["   "] * 200)
    return train_args(tmp_path, config)


def tiny_corpus_huge_vocabulary(tmp_path: Path, config: dict) -> list[str]:
    for lang in ("es", "en"):
        path = corpus_file(config, "train", lang)
        write_lines(path, path.read_text(encoding="utf-8").splitlines()[:20])
    config["tokenizer"]["vocab_size"] = 50000
    return train_args(tmp_path, config)


def early_stopping_without_dev(tmp_path: Path, config: dict) -> list[str]:
    config["data"]["dev"] = None
    config["train"]["early_stopping_patience"] = 2
    return train_args(tmp_path, config)


def raw_config(text: str | bytes) -> Callable[[Path, dict], list[str]]:
    def make(tmp_path: Path, config: dict) -> list[str]:
        path = tmp_path / "bad.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return ["train", str(path)]

    return make


def resume_another_configs_run(tmp_path: Path, config: dict) -> list[str]:
    other = config_from_dict({**config, "train": {**config["train"], "lr": 0.5}})
    save_checkpoint({"config": config_to_dict(other), "step": 3}, Path(config["train"]["run_dir"]) / "last.pt")
    return train_args(tmp_path, config, "--resume")


def checkpoint_file(kind: str) -> Callable[[Path, dict], list[str]]:
    """`seq2seq info` on a file that is not a usable checkpoint."""

    def make(tmp_path: Path, config: dict) -> list[str]:
        path = tmp_path / f"{kind}.pt"
        if kind.startswith("random-"):
            generator = torch.Generator().manual_seed(int(kind.split("-")[1]))
            path.write_bytes(torch.randint(0, 256, (5000,), generator=generator).byte().numpy().tobytes())
        elif kind == "truncated":
            save_checkpoint({"model": {"w": torch.randn(3000)}, "step": 1}, path)
            path.write_bytes(path.read_bytes()[:6000])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "foreign":
            torch.save({"state_dict": {"layer.weight": torch.ones(2, 2)}, "epoch": 3}, path)
        return ["info", str(path)]

    return make


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")

# case -> (arguments, substrings of the error line, whether log lines may come before it: the corpus
# is read, and its errors found, after the run has started logging)
BAD_INPUTS: dict[str, tuple[Callable[[Path, dict], list[str]], list[str], bool]] = {
    # corpora
    "missing training file": (missing_training_prefix, ["corpus file not found: {tmp}/nowhere/train.es"], True),
    "missing target side": (missing_target_side, ["corpus file not found: {tmp}/corpus/train.en"], True),
    "misaligned dev set": (
        misaligned_dev,
        ["misaligned corpus: {tmp}/corpus/dev.es has 20 lines but {tmp}/corpus/dev.en has 19"],
        True,
    ),
    "invalid UTF-8": (invalid_utf8_line_7, ["{tmp}/corpus/train.en, line 7: not valid UTF-8 (byte 4)"], True),
    "invalid UTF-8 in gzip": (
        invalid_utf8_in_gzip,
        ["{tmp}/corpus/train.es.gz, line 3: not valid UTF-8 (byte 1)"],
        True,
    ),
    "not gzip": (not_gzip, ["cannot read {tmp}/corpus/train.en.gz"], True),
    "all pairs too long": (
        setting("data.max_src_length", 2),
        ["no training pairs left after filtering {tmp}/corpus/train.es / {tmp}/corpus/train.en", "data.max_src_length"],
        True,
    ),
    "all lines empty": (all_lines_empty, ["{tmp}/corpus/train.es"], True),
    "source side empty": (source_side_empty, ["no training pairs left after filtering {tmp}/corpus/train.es"], True),
    "batch_tokens below longest pair": (
        setting("train.batch_tokens", 10),
        ["train.batch_tokens (10) is smaller"],
        True,
    ),
    "vocabulary too large for corpus": (
        tiny_corpus_huge_vocabulary,
        ["tokenizer.vocab_size 50000 is too large for this corpus", "lower tokenizer.vocab_size"],
        True,
    ),
    "vocabulary too small for the alphabet": (
        setting("tokenizer.vocab_size", 8),
        ["tokenizer.vocab_size 8", "raise tokenizer.vocab_size"],
        True,
    ),
    # config values
    "unknown section": (setting("trian.lr", 0.1), ["unknown config key 'trian' (did you mean 'train'?)"], False),
    "unknown nested key": (
        setting("model.attention.typ", "dot"),
        ["unknown config key 'model.attention.typ' (did you mean 'model.attention.type'?)"],
        False,
    ),
    "section not a mapping": (setting("model", 5), ["config key 'model' must be a mapping of options, got 5"], False),
    "bool for an integer": (
        setting("train.max_steps", True),
        ["config key 'train.max_steps' must be an integer or null, got True"],
        False,
    ),
    "negative size": (
        setting("model.embedding_size", -5),
        ["config key 'model.embedding_size' must be greater than 0, got -5"],
        False,
    ),
    "dropout 1.5 in the file": (
        setting("model.dropout", 1.5),
        ["config key 'model.dropout' must be in [0, 1), got 1.5"],
        False,
    ),
    "adam_betas of one number": (
        setting("train.adam_betas", [0.9]),
        ["config key 'train.adam_betas' must be a list"],
        False,
    ),
    "max_time not a duration": (
        setting("train.max_time", "soon"),
        ["config key 'train.max_time' must be a duration"],
        False,
    ),
    "no end": (setting("train.max_steps", None), ["the run has no end: set train.max_steps"], False),
    "same languages": (setting("data.tgt_lang", "es"), ["'data.src_lang' and 'data.tgt_lang' must differ"], False),
    "unknown attention": (
        setting("model.attention.type", "magic"),
        ["config key 'model.attention.type' must be one of"],
        False,
    ),
    "tied sizes differ": (setting("model.tie_embeddings", True), ["model.tie_embeddings", "(got 32 and 64)"], False),
    "early stopping without dev": (
        early_stopping_without_dev,
        ["config key 'train.early_stopping_patience' needs a dev set: set 'data.dev'"],
        False,
    ),
    "cuda without a GPU": (
        overrides("train.device=cuda"),
        ["train.device is 'cuda' but no CUDA GPU is visible"],
        False,
    ),
    # config files and --set
    "YAML syntax error": (
        raw_config("train:\n  lr: 0.1\n  max_steps: [4\n"),
        ["config file {tmp}/bad.yaml is not valid YAML at line"],
        False,
    ),
    "config not a mapping": (
        raw_config("- train\n- model\n"),
        ["config file {tmp}/bad.yaml must hold a mapping"],
        False,
    ),
    "config not UTF-8": (raw_config(b"name: caf\xe9\n"), ["config file {tmp}/bad.yaml is not UTF-8 text"], False),
    "--set without =": (overrides("train.lr"), ["--set expects key.path=value, got 'train.lr'"], False),
    "--set unknown key": (overrides("train.nope=1"), ["unknown config key 'train.nope'"], False),
    "--set through a value": (
        overrides("train.max_steps.x=1"),
        ["--set train.max_steps.x: 'max_steps' is not a section"],
        False,
    ),
    "--set unreadable value": (overrides("train.lr=[0.1"), ["--set train.lr: cannot read value '[0.1'"], False),
    # run directories
    "resume another config's run": (
        resume_another_configs_run,
        ["{tmp}/run holds a run of a different config", "--force"],
        False,
    ),
    # evaluate and info
    "evaluate --beam 0": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt"), "--beam", "0"],
        ["--beam must be 1 or more, got 0"],
        False,
    ),
    "evaluate --alpha -1": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt"), "--alpha", "-1"],
        ["--alpha must be 0 or more"],
        False,
    ),
    "evaluate a missing checkpoint": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt")],
        ["checkpoint not found: {tmp}/best.pt"],
        False,
    ),
    "evaluate on cuda without a GPU": (
        lambda tmp_path, config: ["evaluate", str(tmp_path / "best.pt"), "--device", "cuda"],
        ["no CUDA GPU is visible", "--device"],
        False,
    ),
    # Random bytes: most give an UnpicklingError; seed 3 a KeyError, seed 12 an IndexError, seed 110 a torch warning.
    **{
        f"info on random bytes (seed {seed})": (
            checkpoint_file(f"random-{seed}"),
            [f"{{tmp}}/random-{seed}.pt is not a"],
            False,
        )
        for seed in (0, 3, 12, 110)
    },
    "info on a truncated checkpoint": (
        checkpoint_file("truncated"),
        ["{tmp}/truncated.pt is not a readable checkpoint (truncated or corrupt"],
        False,
    ),
    "info on an empty file": (checkpoint_file("empty"), ["{tmp}/empty.pt is not a readable checkpoint"], False),
    "info on another program's file": (
        checkpoint_file("foreign"),
        ["{tmp}/foreign.pt is not a seq2seq checkpoint (it was written by another program)"],
        False,
    ),
    "info on a directory": (lambda tmp_path, config: ["info", str(tmp_path)], ["{tmp} is a directory"], False),
}
GPU_CASES = {"cuda without a GPU", "evaluate on cuda without a GPU"}


IN_A_SUBPROCESS = {"info on random bytes (seed 110)"}  # pytest would catch the Python warning in-process


def bad_input_param(case: str):
    marks = [NO_GPU] if case in GPU_CASES else []
    return pytest.param(case, marks=marks)


@pytest.mark.parametrize("case", [bad_input_param(c) for c in sorted(BAD_INPUTS)])
def test_bad_input_exits_2_with_one_error_line(tmp_path: Path, tiny_config, capfd, case: str):
    make_args, expected, late = BAD_INPUTS[case]
    args = make_args(tmp_path, tiny_config)
    if case in IN_A_SUBPROCESS:
        result = subprocess.run(
            [sys.executable, "-m", "seq2seq", *args], capture_output=True, text=True, timeout=120, check=False
        )
        status, out, err = result.returncode, result.stdout, result.stderr
    else:
        status = main(args)  # an exception escaping main() would be a traceback
        captured = capfd.readouterr()  # file descriptors: SentencePiece's C++ output counts too
        out, err = captured.out, captured.err
    lines = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("seq2seq: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    before = lines[:-1]
    assert all(LOG_LINE.match(line) for line in before) if late else before == [], err
    for text in expected:
        assert text.replace("{tmp}", str(tmp_path)) in errors[0]
    assert out == ""
    assert not (tmp_path / "run" / "best.pt").exists()


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


# --- runs killed from outside ------------------------------------------------------------------------

REF_STEPS = 16  # 5 to 6 epochs of 3 batches
VALIDATE_EVERY = 4  # last.pt is rewritten often (each validation also draws curves.png: 0.4 s)


def robust_config(directory: Path, corpus: dict, run: str, max_steps: int = REF_STEPS) -> dict:
    """Dropout and label smoothing on (every RNG matters), frequent checkpoints, a small dev set."""
    config = regularised_toy_config(directory, corpus, run, max_steps)
    config["data"]["dev"] = corpus["dev"]
    config["train"].update(validate_every=VALIDATE_EVERY, validate_max_sentences=6)
    return config


def write_yaml(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """The toy corpus and the final weights of an uninterrupted run of `robust_config`."""
    directory = tmp_path_factory.mktemp("robust")
    corpus = write_toy_corpus(directory)
    train(config_from_dict(robust_config(directory, corpus, "reference")))
    reference = torch.load(directory / "reference" / "last.pt", weights_only=True)
    assert reference["step"] == REF_STEPS
    return {"dir": directory, "corpus": corpus, "weights": reference["model"]}


def seq2seq_process(directory: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """`python -m seq2seq ARGS` in the background; its stderr goes to a file."""
    stderr = directory / f"{name}.stderr"
    with open(stderr, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "seq2seq", *args], cwd=directory, stdout=subprocess.DEVNULL, stderr=handle
        )
    return process, stderr


def lines_written(path: Path) -> int:
    """Complete lines in a file another process is appending to."""
    return path.read_text(encoding="utf-8").count("\n") if path.is_file() else 0


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, stderr: Path, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before {what}:\n{stderr.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"no {what} after {timeout} s:\n{stderr.read_text()}")
        time.sleep(0.005)


def resume_line(run_dir: Path, payload: dict) -> str:
    state = payload["training_state"]
    return (
        f"Resumed {run_dir} at step {payload['step']} (epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']} "
        f"of it), best dev BLEU {state['best_bleu']:.2f} at step {state['best_step']}"
    )


@pytest.fixture(scope="module")
def killed_and_resumed(workspace) -> dict:
    """A CLI run killed with SIGKILL once last.pt exists and a step past it is done, then `--resume`d by the CLI."""
    directory = workspace["dir"]
    config = write_yaml(directory / "killed.yaml", robust_config(directory, workspace["corpus"], "killed"))
    run_dir = directory / "killed"
    process, stderr = seq2seq_process(directory, "killed", "train", config)
    try:
        wait_until(
            lambda: (run_dir / "last.pt").is_file() and lines_written(run_dir / "progress.jsonl") > VALIDATE_EVERY,
            process,
            stderr,
            "last.pt",
        )
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed = load_checkpoint(run_dir / "last.pt")
    resumed = subprocess.run(
        [sys.executable, "-m", "seq2seq", "train", config, "--resume"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return {"config": config, "run_dir": run_dir, "status": process.returncode, "killed": killed, "resumed": resumed}


def test_kill_9_then_resume_equals_an_uninterrupted_run(workspace, killed_and_resumed):
    run = killed_and_resumed
    run_dir, killed = run["run_dir"], run["killed"]
    assert run["status"] == -signal.SIGKILL
    assert 0 < killed["step"] < REF_STEPS and killed["step"] % VALIDATE_EVERY == 0
    assert killed["training_state"]["best_step"] > 0  # a real best score to report

    assert run["resumed"].returncode == 0, run["resumed"].stderr
    final = torch.load(run_dir / "last.pt", weights_only=True)
    assert final["step"] == REF_STEPS
    assert_same_weights(workspace["weights"], final["model"])

    said = resume_line(run_dir, killed)
    assert said in run["resumed"].stderr
    assert said in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == REF_STEPS


def test_info_shows_versions_command_and_data_hashes(workspace, killed_and_resumed, capsys):
    assert main(["info", str(killed_and_resumed["run_dir"] / "last.pt")]) == 0
    printed = capsys.readouterr().out
    record = json.loads(printed)["run"]
    for package in ("torch", "sentencepiece", "sacrebleu"):
        assert record["versions"][package] == version(package)
        assert f'"{package}": "{version(package)}"' in printed
    # The command line of the process that wrote the checkpoint: the resumed one.
    assert record["command"].endswith(f"train {killed_and_resumed['config']} --resume")
    prefix = workspace["corpus"]["train"]
    digests = [hashlib.sha256(Path(f"{prefix}.{lang}").read_bytes()).hexdigest() for lang in ("es", "en")]
    assert record["train_data_sha256"] == digests
    assert all(digest in printed for digest in digests)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_says_how_to_resume(workspace, capfd, signum):
    directory = workspace["dir"]
    run = f"stopped-{signum.name}"
    config = write_yaml(directory / f"{run}.yaml", robust_config(directory, workspace["corpus"], run, max_steps=10**6))
    run_dir = directory / run
    process, stderr = seq2seq_process(directory, run, "train", config)
    try:
        wait_until(lambda: lines_written(run_dir / "progress.jsonl") > 0, process, stderr, "a training step")
        process.send_signal(signum)
        status = process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()
    said = stderr.read_text()
    assert status == 130, said
    assert "Traceback" not in said
    assert "Stop requested" in said
    assert f"To continue this run: seq2seq train {run_dir / 'config.yaml'} --resume" in said
    stopped = load_checkpoint(run_dir / "last.pt")
    step = stopped["step"]
    assert 0 < step < REF_STEPS, f"stopped at step {step}: too late for the comparison below"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["interrupted"] and summary["stop_reason"] == "interrupted" and summary["steps"] == step

    # Resume as the message says (a lower step limit is allowed); it continues exactly.
    assert main(["train", str(run_dir / "config.yaml"), "--resume", "--set", f"train.max_steps={REF_STEPS}"]) == 0
    assert resume_line(run_dir, stopped) in capfd.readouterr().err
    final = torch.load(run_dir / "last.pt", weights_only=True)
    assert final["step"] == REF_STEPS
    assert_same_weights(workspace["weights"], final["model"])


# --- a crash while a checkpoint is written ---------------------------------------------------------

# Runs the CLI with torch.save replaced: the second write of last.pt stops half way, killed by SIGKILL.
CRASH_IN_SECOND_SAVE_OF_LAST_PT = r"""
import io, os, signal, sys
import torch

real_save, writes = torch.save, []

def save(obj, handle, *args, **kwargs):
    if not str(getattr(handle, "name", "")).endswith(".last.pt.tmp"):
        return real_save(obj, handle, *args, **kwargs)
    writes.append(1)
    if len(writes) < 2:
        return real_save(obj, handle, *args, **kwargs)
    whole = io.BytesIO()
    real_save(obj, whole)
    handle.write(whole.getvalue()[: len(whole.getvalue()) // 2])
    handle.flush()
    os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save
from seq2seq.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def crashed_while_saving(workspace) -> dict:
    """A run killed half way through writing last.pt (its second write), then resumed in-process."""
    directory = workspace["dir"]
    data = robust_config(directory, workspace["corpus"], "crashed")
    config = write_yaml(directory / "crashed.yaml", data)
    run_dir = directory / "crashed"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_IN_SECOND_SAVE_OF_LAST_PT, "train", config],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    partial = run_dir / ".last.pt.tmp"
    after_crash = {
        "status": crashed.returncode,
        "stderr": crashed.stderr,
        "partial": partial.read_bytes() if partial.exists() else None,
        "last": load_checkpoint(run_dir / "last.pt"),
    }
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(partial)
    summary = train(config_from_dict(data), resume=True)
    return {"run_dir": run_dir, "after_crash": after_crash, "summary": summary}


def test_crash_while_saving_keeps_the_previous_checkpoint(workspace, crashed_while_saving):
    run_dir, after = crashed_while_saving["run_dir"], crashed_while_saving["after_crash"]
    assert after["status"] == -signal.SIGKILL, after["stderr"]
    assert after["partial"], "the crash should leave a half-written temporary file"
    assert after["last"]["step"] == VALIDATE_EVERY  # the first save, intact
    # The next saves work: the resumed run ends with a whole last.pt, equal to an uninterrupted run's.
    assert crashed_while_saving["summary"]["steps"] == REF_STEPS
    final = load_checkpoint(run_dir / "last.pt")
    assert final["step"] == REF_STEPS
    assert_same_weights(workspace["weights"], final["model"])
    assert not list(run_dir.glob(".*.tmp"))


def test_resume_after_a_crash_records_each_step_once(crashed_while_saving):
    run_dir = crashed_while_saving["run_dir"]
    for name in ("progress.jsonl", "metrics.jsonl"):
        steps = [record["step"] for record in read_jsonl(run_dir / name)]
        assert steps == sorted(set(steps)), f"{name}: {steps}"


# --- numerical faults --------------------------------------------------------------------------------


def test_non_finite_batches_are_skipped_and_counted(tmp_path: Path, caplog):
    src, tgt = toy_pairs(30)
    src[0] += " raro"  # the only sentence with this word; its embedding will be NaN
    corpus = {"train": write_parallel(tmp_path / "nan" / "train", src, tgt), "dev": None}
    data = make_toy_config(tmp_path, corpus)
    data["tokenizer"]["vocab_size"] = TOY_VOCAB + 1
    data["train"].update(max_steps=9, validate_every=9)
    trainer = Trainer(config_from_dict(data))
    try:
        raro = trainer.tokenizer.src.piece_to_id("▁raro")
        assert raro != UNK_ID
        with torch.no_grad():
            trainer.model.encoder.embedding.weight[raro] = float("nan")
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        batches = [b for epoch in range(9) for b in trainer.sampler.rank_batches(epoch)][:9]
        bad_steps = [step for step, batch in enumerate(batches, start=1) if 0 in batch]
        assert 2 <= len(bad_steps) < 9
        summary = trainer.run()
    finally:
        trainer.close()
    assert summary["steps"] == 9 and summary["stop_reason"] == "reached train.max_steps (9)"
    assert summary["skipped_updates"] == len(bad_steps)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_updates"] == len(bad_steps)
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert warnings == [
        f"Step {step}: non-finite loss or gradient, update skipped ({count} so far)"
        for count, step in enumerate(bad_steps, start=1)
    ]
    progress = read_jsonl(tmp_path / "run" / "progress.jsonl")
    assert [p["step"] for p in progress] == [s for s in range(1, 10) if s not in bad_steps]
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
        f"seq2seq: error: {MAX_BAD_STEPS_IN_A_ROW} updates in a row had a non-finite loss or gradient: the run "
        f"diverged; lower train.lr or set train.clip_grad_norm (last good checkpoint: {run_dir / 'last.pt'})"
    )
    skipped = [line for line in lines if "update skipped" in line]
    assert len(skipped) == MAX_BAD_STEPS_IN_A_ROW and f"({MAX_BAD_STEPS_IN_A_ROW} so far)" in skipped[-1]
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
    assert payload["training_state"]["consecutive_bad"] == 0, f"saved at step {payload['step']}, inside the streak"
    model, tokenizer, _, _ = load_trained(path)
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
    assert error.startswith("seq2seq: error: ") and str(run_dir / "last.pt") in error
