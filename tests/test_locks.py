"""Several processes, one disk: the run directory's lock, the shared cache's lock, and damaged cache entries."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
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
from seq2seq.rundir import RunDir

# --- the lock itself -----------------------------------------------------------------------------------


def _hold_lock(path: str, ready: str) -> None:  # runs in a child process
    with exclusive(Path(path), wait=False):
        Path(ready).touch()
        time.sleep(60)


def _wait_for(path: Path, child: multiprocessing.Process, what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert child.is_alive() and time.monotonic() < deadline, f"the child never got to {what}"
        time.sleep(0.01)


def _start(target, *args: str) -> multiprocessing.Process:
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    return child


def _kill(child: multiprocessing.Process) -> None:
    if child.pid is not None and child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
    child.join()


def _owner_seen_by_another_process(lock: Path) -> dict | str:
    """What a fresh process meets when it tries the lock: the holder's record, or "free"."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_try_lock, (str(lock),))


def _try_lock(path: str) -> dict | str:  # runs in a child process
    try:
        with exclusive(Path(path), wait=False):
            return "free"
    except LockBusy as busy:
        return busy.owner


def test_a_held_lock_is_refused_with_its_owner_and_a_dead_owners_lock_is_taken_over(tmp_path: Path):
    lock, ready = tmp_path / "x.lock", tmp_path / "ready"
    child = _start(_hold_lock, str(lock), str(ready))
    try:
        _wait_for(ready, child, "the lock")
        with pytest.raises(LockBusy) as busy, exclusive(lock, wait=False):
            pass
        assert busy.value.owner["pid"] == child.pid
        assert f"pid {child.pid} on " in str(busy.value)
    finally:
        _kill(child)  # dies holding it: the kernel releases the lock
    with exclusive(lock, wait=False) as previous:
        assert previous["pid"] == child.pid  # the record of the holder that died
        assert _owner_seen_by_another_process(lock)["pid"] == os.getpid()  # held, with this process's record
    assert read_owner(lock) == {}  # a clean release empties the record
    assert _owner_seen_by_another_process(lock) == "free"
    with exclusive(lock, wait=False) as previous:
        assert previous == {}


def _lock_run_dir_then_fork(path: str, ready: str) -> None:  # runs in a child process: a trainer with a worker
    with RunDir(path).locked():
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        worker.start()  # like a DataLoader worker: forked while the lock is held
        Path(ready).write_text(str(worker.pid))
        time.sleep(60)


def test_a_killed_trainers_forked_workers_do_not_keep_its_run_directory_locked(tmp_path: Path):
    run, ready = tmp_path / "run", tmp_path / "ready"
    trainer = _start(_lock_run_dir_then_fork, str(run), str(ready))
    try:
        _wait_for(ready, trainer, "its lock and its worker")
        worker = int(ready.read_text())
        _kill(trainer)
        assert Path(f"/proc/{worker}").exists()  # the orphaned worker lives on
        with RunDir(run).locked():  # yet the run directory is free at once
            pass
    finally:
        _kill(trainer)
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_a_run_refused_at_a_new_directory_leaves_the_holders_lock_and_directory(tmp_path: Path):
    run, ready = tmp_path / "new-run", tmp_path / "ready"
    child = _start(_hold_lock_of_a_new_run_dir, str(run), str(ready))
    try:
        _wait_for(ready, child, "the lock")
        with (
            pytest.raises(UserError, match=f"in use by another training run \\(pid {child.pid} on "),
            RunDir(run).locked(),
        ):
            pass
        assert (run / ".lock").is_file()  # the refused run removed nothing of the holder's
        assert _owner_seen_by_another_process(run / ".lock")["pid"] == child.pid
    finally:
        _kill(child)


def _hold_lock_of_a_new_run_dir(path: str, ready: str) -> None:  # runs in a child process
    with RunDir(path).locked():
        Path(ready).touch()
        time.sleep(60)


# --- the shared cache ------------------------------------------------------------------------------------


def _build_when_told(cache: str, started: str, proceed: str) -> None:  # runs in a child process
    def build(directory: Path) -> None:
        Path(started).touch()
        deadline = time.monotonic() + 60
        while not Path(proceed).exists() and time.monotonic() < deadline:  # until the reader is seen waiting
            time.sleep(0.01)
        (directory / "data.bin").write_bytes(b"built by the first process")

    cached_entry(Path(cache), "entry-a", build, "test entry")


def test_a_second_process_waits_for_the_builder_and_reads_its_whole_entry(tmp_path: Path, caplog):
    cache, started, proceed = tmp_path / "cache", tmp_path / "started", tmp_path / "proceed"
    builder = _start(_build_when_told, str(cache), str(started), str(proceed))
    try:
        _wait_for(started, builder, "building")
        assert entry_problem(cache / "entry-a") == "missing"  # being built: not visible yet

        def build_again(directory: Path) -> None:
            raise AssertionError("built twice: the lock did not hold the second process back")

        caplog.set_level(logging.INFO, logger="seq2seq")
        found: list[Path] = []
        reader = threading.Thread(
            target=lambda: found.append(cached_entry(cache, "entry-a", build_again, "test entry"))
        )
        reader.start()
        deadline = time.monotonic() + 60
        while not any(r.getMessage().startswith("Waiting for pid ") for r in caplog.records):
            assert reader.is_alive() and time.monotonic() < deadline, "the reader did not wait for the builder"
            time.sleep(0.01)
        proceed.touch()
        reader.join(60)
        builder.join(60)
    finally:
        proceed.touch()
        _kill(builder)
    assert builder.exitcode == 0 and len(found) == 1
    assert (found[0] / "data.bin").read_bytes() == b"built by the first process"
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith(f"Waiting for pid {builder.pid} on ") for message in messages), messages
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
