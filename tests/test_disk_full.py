"""A full disk while training writes the cache, a checkpoint or its records: one clear line, nothing half-written.

Each run gets a real small disk (a tmpfs in a private mount namespace, tests/small_disk.py), so the
"No space left on device" comes from the kernel, at a point the test chooses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ERROR_PREFIX, SUBPROCESS_ENV, make_toy_config, write_toy_corpus, write_yaml

from seq2seq.checkpoint import load_checkpoint
from seq2seq.rundir import read_records

pytestmark = pytest.mark.slow  # each test trains in a child process

SMALL_DISK = Path(__file__).resolve().parent / "small_disk.py"
NO_SPACE = "No space left on device"


def namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--map-root-user", "--mount", "true"], check=False).returncode == 0
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module", autouse=True)
def _small_disks_available():
    if not namespaces_work():
        if os.environ.get("CI") == "true":
            pytest.fail("unshare --map-root-user --mount does not work here: the disk-full tests need it")
        pytest.skip("no private mount namespaces (unshare --map-root-user --mount) on this machine")


def train_on_small_disk(tmp_path: Path, config: dict, mount: Path, size: int, **fill) -> dict:
    """`seq2seq train` with `mount` on a tmpfs of `size` bytes; returns its status, stderr and the files it left."""
    copy = tmp_path / "left"
    spec = {
        "mount": str(mount),
        "size": size,
        "command": [sys.executable, "-m", "seq2seq", "train", write_yaml(tmp_path / "config.yaml", config)],
        "cwd": str(tmp_path),
        "copy_to": str(copy),
        "fill_after": fill.get("fill_after"),
        "leave_free": fill.get("leave_free", 0),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    command = ["unshare", "--map-root-user", "--mount", sys.executable, str(SMALL_DISK), str(tmp_path / "spec.json")]
    subprocess.run(command, env=SUBPROCESS_ENV, check=True, timeout=300)
    return json.loads((tmp_path / "left.json").read_text()) | {"left": copy}


def one_error_line(result: dict) -> str:
    """The run exited 2 with one 'seq2seq: error:' line as the last thing it said, and no traceback."""
    assert result["status"] == 2, result["stderr"]
    assert "Traceback" not in result["stderr"] and "Logging error" not in result["stderr"]
    errors = [line for line in result["stderr"].splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and result["stderr"].strip().endswith(errors[0]), result["stderr"]
    return errors[0]


def no_half_written_files(directory: Path) -> None:
    assert not [p.name for p in directory.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    for records in directory.glob("*.jsonl"):  # every line a whole record
        lines = records.read_text().splitlines()
        assert all(json.loads(line) for line in lines), records


@pytest.mark.parametrize(("what", "pairs", "size"), [("spm", 30, 64 << 10), ("corpus", 3000, 320 << 10)])
def test_a_full_cache_disk_is_one_line_and_leaves_no_entry(tmp_path: Path, what: str, pairs: int, size: int):
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path, count=pairs))
    cache = tmp_path / "cache"
    result = train_on_small_disk(tmp_path, config, cache, size)
    line = one_error_line(result)
    name = "SentencePiece model" if what == "spm" else "encoded training corpus"
    assert line.startswith(f"{ERROR_PREFIX}could not write {cache}/{what}-"), line
    assert line.endswith(f": {NO_SPACE}; no part of the {name} was kept (data.cache_dir); free some space")
    left = result["left"]
    assert not list(left.glob(f"{what}-*")) and not list(left.glob(".*.tmp"))  # no entry, whole or half
    if what == "corpus":
        assert len(list(left.glob("spm-*"))) == 1  # the entry before it is whole and stays usable


def fill_mid_run_config(tmp_path: Path) -> dict:
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["train"].update(max_steps=200, validate_every=100, log_every=1, keep_checkpoints=1)
    return config


def test_a_disk_filled_mid_run_stops_at_the_next_checkpoint_and_keeps_the_previous_one(tmp_path: Path):
    config = fill_mid_run_config(tmp_path)
    run_dir = Path(config["train"]["run_dir"])
    # After the first save point, 64 KB stay free: enough for the records of 100 updates, not for a checkpoint.
    result = train_on_small_disk(
        tmp_path, config, run_dir, 16 << 20, fill_after=["last.pt", "curves.png"], leave_free=64 << 10
    )
    assert result["filled"]
    line = one_error_line(result)
    assert line == (
        f"{ERROR_PREFIX}could not write checkpoint {run_dir / 'last.pt'}: {NO_SPACE}; the previous checkpoint is kept"
    )
    left = result["left"]
    no_half_written_files(left)
    assert load_checkpoint(left / "last.pt")["step"] == 100  # the first save point's, whole
    assert [r["step"] for r in read_records(left / "progress.jsonl")] == list(range(1, 201))


def test_a_disk_filled_mid_run_stops_at_the_next_record_and_cuts_nothing_in_half(tmp_path: Path):
    config = fill_mid_run_config(tmp_path)
    run_dir = Path(config["train"]["run_dir"])
    result = train_on_small_disk(tmp_path, config, run_dir, 16 << 20, fill_after=["last.pt", "curves.png"])
    assert result["filled"]
    line = one_error_line(result)
    assert line == (
        f"{ERROR_PREFIX}could not write {run_dir / 'progress.jsonl'}: {NO_SPACE}; its earlier records are kept; "
        "free some space"
    )
    left = result["left"]
    no_half_written_files(left)
    steps = [r["step"] for r in read_records(left / "progress.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and 100 <= len(steps) < 200
    assert load_checkpoint(left / "last.pt")["step"] == 100
