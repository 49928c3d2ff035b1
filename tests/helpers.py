"""Plain helpers and constants shared by the test modules (fixtures live in conftest.py).

Test modules import from here as `from helpers import ...`: pytest's default ("prepend") import
mode puts this directory, which has no __init__.py, on sys.path, with `pytest` and `python -m pytest`.
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

DATA = Path(__file__).resolve().parent.parent / "data"

# A toy Spanish -> English lexicon: word-for-word translation that a tiny model memorises in seconds.
TOY_ES = "uno dos tres cuatro cinco seis siete ocho nueve diez gato perro casa rojo azul verde grande".split()  # noqa: SIM905
TOY_EN = "one two three four five six seven eight nine ten cat dog house red blue green big".split()  # noqa: SIM905
TOY_VOCAB = len(TOY_ES) + len(TOY_EN) + 4  # one piece per word plus the 4 special pieces

TOY_MODEL_STEPS = 80  # the toy corpus is memorised (dev BLEU about 100) well before this

LOG_LINE = re.compile(r"\d\d:\d\d:\d\d ")  # the console log format of seq2seq.cli.setup_logging
ERROR_PREFIX = "seq2seq: error: "
# What load_checkpoint says of bytes that are no checkpoint: which of the two depends on where the unpickler fails.
NOT_A_CHECKPOINT = (
    r"is not a (seq2seq checkpoint \(truncated, corrupt or another format\)"
    r"|readable checkpoint \(truncated or corrupt: .+\))$"
)

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 cores: keep child processes to one thread


def _native_bf16() -> bool:
    from seq2seq.device import native_bf16

    return native_bf16()


# bf16 numerics need a CPU with bf16 (elsewhere bf16 is refused, which tests/test_device.py checks there too)
needs_native_bf16 = pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bf16 (refused here)")


# --- files and corpora ------------------------------------------------------------------------------


def head(path: Path, count: int) -> list[str]:
    """The first `count` lines of a text file."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for _, line in zip(range(count), handle)]


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write lines as a UTF-8 text file, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def file_lines(path: Path) -> list[str]:
    """Lines of a file written one per line (each ends with a newline)."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def write_parallel(prefix: Path, src: list[str], tgt: list[str]) -> str:
    """Write prefix.es / prefix.en and return the prefix as the config wants it."""
    write_lines(Path(f"{prefix}.es"), src)
    write_lines(Path(f"{prefix}.en"), tgt)
    return str(prefix)


def toy_pairs(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`count` distinct toy sentence pairs of 3 to 6 words."""
    rng = random.Random(seed)
    sentences: set[tuple[int, ...]] = set()
    while len(sentences) < count:
        sentences.add(tuple(rng.randrange(len(TOY_ES)) for _ in range(rng.randint(3, 6))))
    ordered = sorted(sentences)
    return [" ".join(TOY_ES[i] for i in s) for s in ordered], [" ".join(TOY_EN[i] for i in s) for s in ordered]


def toy_sentence(words: int, seed: int = 0) -> str:
    """`words` random toy source words (any length, unlike the 3-6 word training sentences)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(TOY_ES) for _ in range(words))


def write_toy_corpus(directory: Path, count: int = 30) -> dict[str, str]:
    """`count` synthetic word-for-word pairs; dev is the same pairs (for overfitting)."""
    src, tgt = toy_pairs(count)
    train = write_parallel(directory / "toy" / "train", src, tgt)
    dev = write_parallel(directory / "toy" / "dev", src, tgt)
    return {"train": train, "dev": dev}


# --- configs ------------------------------------------------------------------------------------------


def make_config(tmp_path: Path, corpus: dict[str, str]) -> dict:
    """A config dict for a tiny, fast run whose files all live under tmp_path."""
    return {
        "name": "tiny",
        "data": {
            "train": corpus["train"],
            "dev": corpus["dev"],
            "test": None,
            "cache_dir": str(tmp_path / "cache"),
        },
        "tokenizer": {"vocab_size": 300},
        "model": {
            "embedding_size": 32,
            "encoder_hidden_size": 32,
            "decoder_hidden_size": 64,
            "dropout": 0.1,
            "attention": {"type": "additive"},
        },
        "train": {
            "run_dir": str(tmp_path / "run"),
            "device": "cpu",
            # One thread: tiny models gain nothing from more, and CPU contention makes more far slower.
            "threads": 1,
            "batch_tokens": 800,
            "max_steps": 4,
            "validate_every": 1000,
            "log_every": 1,
            "keep_checkpoints": 1,
            "schedule": {"type": "constant", "warmup_steps": 0},
        },
    }


def make_toy_config(directory: Path, corpus: dict[str, str]) -> dict:
    """Config dict for the toy corpus: a word-level vocabulary, no dropout, a high constant lr."""
    config = make_config(directory, corpus)
    config["tokenizer"] = {"vocab_size": TOY_VOCAB, "model_type": "word"}
    config["model"]["dropout"] = 0.0
    config["train"].update(lr=0.01, label_smoothing=0.0, batch_tokens=100)
    return config


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


def write_yaml(path: Path, data) -> str:
    """Write `data` as a YAML file; returns its path as the CLI wants it."""
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def write_config(tmp_path: Path, data: dict) -> str:
    """Write a config dict as tmp_path/config.yaml; returns its path."""
    return write_yaml(tmp_path / "config.yaml", data)


# --- runs and checkpoints -------------------------------------------------------------------------------


def assert_same_weights(first: dict, second: dict) -> None:
    """Two state dicts hold the same names and bit-identical tensors."""
    assert first.keys() == second.keys()
    for key, tensor in first.items():
        assert torch.equal(tensor, second[key]), f"{key} differs"


def checkpoint_copy(toy_model: dict, tmp_path: Path) -> Path:
    """The toy model's best checkpoint copied to tmp_path, so default outputs beside it stay out of the shared run."""
    return Path(shutil.copy(toy_model["checkpoint"], tmp_path / "best.pt"))


def random_bytes(tmp_path: Path, seed: int = 0) -> Path:
    """tmp_path/noise.pt: 4096 random bytes."""
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    return path


# --- the command line -------------------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    """The captured run printed exactly one line, a 'seq2seq: error:' line on stderr, and nothing else."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(ERROR_PREFIX)
    assert "Traceback" not in captured.err and captured.out == ""
    return lines[0]


def run_seq2seq(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m seq2seq ARGS` in a child process (one thread), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "seq2seq", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=SUBPROCESS_ENV,
        timeout=timeout,
        check=False,
    )


def assert_subprocess_one_line_error(result: subprocess.CompletedProcess) -> str:
    """A child process exited 2 with one 'seq2seq: error:' line on stderr, no traceback and no output."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX) and result.stdout == ""
    return lines[0]


# --- background processes -------------------------------------------------------------------------------


def seq2seq_process(
    directory: Path, name: str, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, Path]:
    """`python -m seq2seq ARGS` in the background, in `directory` (with `env` added to the environment); its
    stderr goes to directory/NAME.stderr."""
    stderr = directory / f"{name}.stderr"
    with open(stderr, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "seq2seq", *args],
            cwd=directory,
            env=SUBPROCESS_ENV | (env or {}),
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )
    return process, stderr


def lines_written(path: Path) -> int:
    """Complete lines in a file another process is appending to."""
    return path.read_text(encoding="utf-8").count("\n") if path.is_file() else 0


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, stderr: Path, what: str, timeout: float = 120):
    """Poll `condition` until it holds; fail (killing the process) if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended (status {process.returncode}) before {what}:\n{stderr.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"no {what} after {timeout} s:\n{stderr.read_text()}")
        time.sleep(0.005)


# --- torchrun launches (tests/test_distributed.py and scripts/bench/launch_loop.py) -----------------------

STANDALONE = ("--standalone", "--nproc_per_node", "2")  # one launch of two processes


def two_process_config(directory: Path, run: str) -> dict:
    """The toy run two torchrun processes train: six updates, two validations."""
    config = make_toy_config(directory, write_toy_corpus(directory, count=60))
    config["model"]["dropout"] = 0.0  # dropout masks differ per process: leave them out of the comparison
    config["train"].update(run_dir=str(directory / run), max_steps=6, validate_every=3, batch_tokens=60, seed=5)
    return config


def start_torchrun(folder: Path, launcher: tuple[str, ...], config_file: Path, *extra: str) -> subprocess.Popen:
    """`torchrun LAUNCHER -m seq2seq train CONFIG EXTRA` in the background, with its evidence kept for a failure:
    faulthandler's Python stacks and torch's C++ stacks in `folder`/stdout and stderr, core dumps in `folder`."""
    folder.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher]
    command += ["-m", "seq2seq", "train", str(config_file), *extra]
    with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
        return subprocess.Popen(
            command,
            env=env,
            cwd=folder,  # core files land here (core_pattern "core")
            preexec_fn=_allow_core_dumps,  # noqa: PLW1509 (only sets a resource limit before exec)
            stdout=stdout,
            stderr=stderr,
            text=True,
        )


def _allow_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def core_backtrace(core: Path) -> str:
    """gdb's backtrace of every thread in a core file (or how to get one where gdb is missing)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return "(gdb is not installed: apt-get install gdb, then gdb -batch -ex 'thread apply all bt' python CORE)"
    command = [gdb, "-batch", "-ex", "thread apply all bt", sys.executable, str(core)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return result.stdout[-20000:] + result.stderr[-2000:]
