"""Several processes, one disk: the run directory's lock, the shared cache's lock, and damaged cache entries."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    ERROR_PREFIX,
    assert_same_weights,
    assert_subprocess_one_line_error,
    make_toy_config,
    run_seq2seq,
    seq2seq_process,
    wait_until,
    write_toy_corpus,
    write_yaml,
)

from seq2seq.cache import MANIFEST, cached_entry, entry_problem
from seq2seq.errors import UserError
from seq2seq.locks import LockBusy, exclusive, read_owner

# --- the lock itself -----------------------------------------------------------------------------------


def _hold_lock(path: str, ready: str) -> None:  # runs in a child process
    with exclusive(Path(path), wait=False):
        Path(ready).touch()
        time.sleep(60)


def _child_holding(tmp_path: Path) -> tuple[multiprocessing.Process, Path]:
    lock, ready = tmp_path / "x.lock", tmp_path / "ready"
    child = multiprocessing.get_context("spawn").Process(target=_hold_lock, args=(str(lock), str(ready)))
    child.start()
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert child.is_alive() and time.monotonic() < deadline, "the child never took the lock"
        time.sleep(0.01)
    return child, lock


def test_a_held_lock_is_refused_with_its_owner_and_a_dead_owners_lock_is_taken_over(tmp_path: Path):
    child, lock = _child_holding(tmp_path)
    try:
        with pytest.raises(LockBusy) as busy, exclusive(lock, wait=False):
            pass
        assert busy.value.owner["pid"] == child.pid
        assert f"pid {child.pid} on " in str(busy.value)
    finally:
        os.kill(child.pid, signal.SIGKILL)  # dies holding it: the kernel releases the flock
        child.join()
    with exclusive(lock, wait=False) as previous:
        assert previous["pid"] == child.pid  # the record of the holder that died
        assert read_owner(lock)["pid"] == os.getpid()
    assert read_owner(lock) == {}  # a clean release empties the record
    with exclusive(lock, wait=False) as previous:
        assert previous == {}


# --- the shared cache ------------------------------------------------------------------------------------


def _build_slowly(cache: str, started: str) -> None:  # runs in a child process
    def build(directory: Path) -> None:
        Path(started).touch()
        time.sleep(1.0)  # long enough for the other process to arrive while this one builds
        (directory / "data.bin").write_bytes(b"built by the first process")

    cached_entry(Path(cache), "entry-a", build, "test entry")


def test_a_second_process_waits_for_the_builder_and_reads_its_whole_entry(tmp_path: Path, caplog):
    cache, started = tmp_path / "cache", tmp_path / "started"
    builder = multiprocessing.get_context("spawn").Process(target=_build_slowly, args=(str(cache), str(started)))
    builder.start()
    deadline = time.monotonic() + 30
    while not started.exists():
        assert builder.is_alive() and time.monotonic() < deadline
        time.sleep(0.005)
    assert entry_problem(cache / "entry-a") == "missing"  # being built: not visible yet

    def build_again(directory: Path) -> None:
        raise AssertionError("built twice: the lock did not hold the second process back")

    caplog.set_level(logging.INFO, logger="seq2seq")
    entry = cached_entry(cache, "entry-a", build_again, "test entry")
    builder.join(30)
    assert builder.exitcode == 0
    assert (entry / "data.bin").read_bytes() == b"built by the first process"
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("Waiting for pid ") for message in messages), messages
    assert any(message.startswith("Test entry reused from cache") for message in messages), messages
    assert not list(cache.glob(".entry-a.*.tmp"))


def _write_two_files(directory: Path) -> None:
    (directory / "a.bin").write_bytes(bytes(range(256)) * 4)
    (directory / "b.json").write_text('{"pairs": 3}')


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda entry: (entry / "a.bin").write_bytes((entry / "a.bin").read_bytes()[:100]), "a.bin has 100 bytes"),
        (lambda entry: (entry / "a.bin").write_bytes(b"\xff" + (entry / "a.bin").read_bytes()[1:]), "checksum"),
        (lambda entry: (entry / "b.json").unlink(), "b.json is missing"),
        (lambda entry: (entry / MANIFEST).unlink(), "it has no manifest"),
        (lambda entry: (entry / MANIFEST).write_text("{not json"), "manifest is unreadable"),
    ],
    ids=["truncated", "flipped-byte", "file-missing", "no-manifest", "bad-manifest"],
)
def test_a_damaged_entry_is_reported_and_rebuilt(tmp_path: Path, caplog, damage, problem):
    cache = tmp_path / "cache"
    entry = cached_entry(cache, "entry-b", _write_two_files, "test entry")
    original = {path.name: path.read_bytes() for path in entry.iterdir()}
    damage(entry)
    assert problem in entry_problem(entry)
    builds = []

    def rebuild(directory: Path) -> None:
        builds.append(directory)
        _write_two_files(directory)

    caplog.set_level(logging.INFO, logger="seq2seq")
    again = cached_entry(cache, "entry-b", rebuild, "test entry")
    assert len(builds) == 1
    assert {path.name: path.read_bytes() for path in again.iterdir()} == original
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"The cached test entry at {entry} is damaged (") and problem in warning
    assert entry_problem(again) is None


def test_a_failed_build_leaves_nothing_and_the_next_one_builds(tmp_path: Path):
    cache = tmp_path / "cache"

    def fail(directory: Path) -> None:
        (directory / "half.bin").write_bytes(b"half")
        raise UserError("the corpus is broken")

    with pytest.raises(UserError, match="the corpus is broken"):
        cached_entry(cache, "entry-c", fail, "test entry")
    assert sorted(p.name for p in cache.iterdir()) == [".entry-c.lock"]  # no entry, no temporary directory
    entry = cached_entry(cache, "entry-c", _write_two_files, "test entry")
    assert entry_problem(entry) is None


def test_a_cache_dir_that_is_a_file_is_one_clear_line(tmp_path: Path):
    (tmp_path / "cache").write_text("not a directory")
    with pytest.raises(UserError, match=r"^data.cache_dir .*cache cannot be created: a file is in the way"):
        cached_entry(tmp_path / "cache", "entry-d", _write_two_files, "test entry")


@pytest.mark.slow
def test_two_trainings_started_together_on_one_cache_both_succeed_and_build_it_once(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path, count=200)
    processes = []
    for name in ("first", "second"):
        config = make_toy_config(tmp_path, corpus)  # one data.cache_dir for both
        config["data"]["dev"] = None
        config["train"].update(run_dir=str(tmp_path / name), max_steps=3, seed=1)
        processes.append(seq2seq_process(tmp_path, name, "train", write_yaml(tmp_path / f"{name}.yaml", config)))
    for process, stderr in processes:
        assert process.wait(timeout=300) == 0, stderr.read_text()
    logs = [(tmp_path / name / "train.log").read_text() for name in ("first", "second")]
    for what in ("SentencePiece model reused from cache", "Encoded training corpus reused from cache"):
        assert sum(what in log for log in logs) == 1, (what, logs)  # one process built it, the other read it
    cache = tmp_path / "cache"
    assert len(list(cache.glob("spm-*"))) == len(list(cache.glob("corpus-*"))) == 1
    assert not list(cache.glob(".*.tmp"))
    first, second = (torch.load(tmp_path / name / "last.pt", weights_only=True) for name in ("first", "second"))
    assert_same_weights(first["model"], second["model"])  # both read the same, whole data


# --- one writer per run directory ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_training_in_a_run_directory_in_use_is_one_line_and_a_killed_runs_lock_is_taken_over(
    tmp_path: Path,
):
    corpus = write_toy_corpus(tmp_path)
    config = make_toy_config(tmp_path, corpus)
    config["data"]["dev"] = None
    config["train"].update(max_steps=1_000_000, log_every=1)
    config_file = write_yaml(tmp_path / "config.yaml", config)
    run_dir = tmp_path / "run"
    process, stderr = seq2seq_process(tmp_path, "first", "train", config_file)
    try:
        wait_until(lambda: (run_dir / "progress.jsonl").is_file(), process, stderr, "the first progress record")
        second = run_seq2seq("train", config_file, "--force", cwd=tmp_path)
        line = assert_subprocess_one_line_error(second)
        assert line.startswith(f"{ERROR_PREFIX}{run_dir} is in use by another training run (pid {process.pid} on ")
        assert line.endswith("wait for it to finish or stop it, or choose another train.run_dir")
        assert process.poll() is None  # the running one goes on, its files untouched
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == process.pid  # left behind by the killed run
    third = run_seq2seq("train", config_file, "--force", "--set", "train.max_steps=2", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert f"from pid {process.pid} on " in third.stderr and "which ended without releasing it" in third.stderr
    assert (run_dir / ".lock").read_text() == ""  # released cleanly this time


def test_a_run_dir_below_a_file_is_one_clear_line_and_creates_nothing(tmp_path: Path, capsys):
    from helpers import one_line_error

    from seq2seq.cli import main

    (tmp_path / "afile").write_text("x")
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["train"]["run_dir"] = str(tmp_path / "afile" / "run")
    assert main(["train", write_yaml(tmp_path / "config.yaml", config)]) == 2
    line = one_line_error(capsys)
    assert (
        line == f"{ERROR_PREFIX}train.run_dir {tmp_path / 'afile' / 'run'} cannot be created: a file is in the way; "
        "give a directory path"
    )


def test_a_run_that_fails_its_checks_leaves_no_directory_behind(tmp_path: Path, capsys):
    from seq2seq.cli import main

    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    assert main(["train", write_yaml(tmp_path / "config.yaml", config), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
