"""Checkpoints: round trip, safe loading, one-line errors, atomic writes."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import NOT_A_CHECKPOINT

from seq2seq import checkpoint, writing
from seq2seq.checkpoint import (
    FORMAT_VERSION,
    KIND,
    TrainingCheckpoint,
    TrainingState,
    WeightsCheckpoint,
    load_checkpoint,
    read_training,
    read_weights,
    save,
    save_checkpoint,
)
from seq2seq.errors import UserError


def payload() -> dict:
    torch.manual_seed(0)
    return {
        "model": {"weight": torch.randn(4, 3), "bias": torch.zeros(3)},
        "step": 12,
        "best_bleu": 31.5,
        "config": {"train": {"lr": 0.001, "adam_betas": [0.9, 0.98]}, "name": "x"},
        "tokenizer": {"src_model": b"\x00spm bytes", "tgt_model": b"\x00spm bytes"},
        "rng": {"python": [3, list(range(5)), None], "torch": torch.get_rng_state()},
    }


def assert_one_line_user_error(path: Path, match: str | None = None) -> str:
    with pytest.raises(UserError, match=match) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    return message


def test_round_trip(tmp_path: Path):
    path = tmp_path / "ckpt" / "last.pt"  # the directory is created
    original = payload()
    save_checkpoint(original, path)
    loaded = load_checkpoint(path)
    assert loaded["kind"] == KIND and loaded["format_version"] == FORMAT_VERSION
    for key in ("step", "best_bleu", "config", "tokenizer"):
        assert loaded[key] == original[key]
    for key, tensor in original["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert torch.equal(loaded["rng"]["torch"], original["rng"]["torch"])


def test_file_loads_with_plain_torch_load_weights_only(tmp_path: Path):
    save_checkpoint(payload(), tmp_path / "a.pt")
    loaded = torch.load(tmp_path / "a.pt", weights_only=True)
    assert loaded["step"] == 12 and torch.equal(loaded["model"]["weight"], payload()["model"]["weight"])


def test_overwrite_leaves_no_temporary_file(tmp_path: Path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_truncated_file(tmp_path: Path):
    save_checkpoint(payload(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert_one_line_user_error(tmp_path / "cut.pt", "not a readable checkpoint \\(truncated or corrupt")


def test_empty_file(tmp_path: Path):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_one_line_user_error(tmp_path / "empty.pt", "truncated or corrupt")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(tmp_path: Path, seed: int):
    path = tmp_path / "noise.pt"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
        .numpy()
        .tobytes()
    )
    assert_one_line_user_error(path, NOT_A_CHECKPOINT)


@pytest.mark.parametrize("other", [{"model": {"w": torch.ones(2)}}, [1, 2, 3], {"kind": "something-else"}])
def test_file_from_another_program(tmp_path: Path, other):
    torch.save(other, tmp_path / "other.pt")
    assert_one_line_user_error(
        tmp_path / "other.pt", "is not a seq2seq checkpoint \\(it was written by another program\\)"
    )


def test_newer_format_version(tmp_path: Path):
    torch.save({"kind": KIND, "format_version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    message = assert_one_line_user_error(tmp_path / "future.pt", f"format {FORMAT_VERSION + 1}, newer than")
    assert "upgrade seq2seq" in message


def test_missing_version_is_refused(tmp_path: Path):
    torch.save({"kind": KIND}, tmp_path / "noversion.pt")
    assert_one_line_user_error(tmp_path / "noversion.pt", "checkpoint format None")


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="is a directory: give a checkpoint file such as .*best.pt"):
        load_checkpoint(tmp_path)


class Exploit:
    """Unpickling this runs code: it would create `marker`."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["system", "open"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path: Path, how: str, writer: str):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    evil = {"kind": KIND, "format_version": FORMAT_VERSION, "model": Exploit(marker, how)}
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    # The exploit works when unpickled unsafely (so the test is meaningful) ...
    pickle.loads(pickle.dumps(Exploit(tmp_path / "control", how)))
    assert (tmp_path / "control").exists()
    # ... but load_checkpoint refuses it and nothing runs.
    assert_one_line_user_error(path, "refusing to load .*only checkpoints written by seq2seq are accepted")
    assert not marker.exists()


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "model": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def half_then_fail(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial data")  # some bytes reach the temporary file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", half_then_fail)
    with pytest.raises(
        UserError,
        match=r"could not write checkpoint .*last\.pt: No space left on device; the previous checkpoint is kept",
    ):
        save_checkpoint({"step": 2, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "the temporary file must be removed"


def test_unwritable_directory_is_a_user_error(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def refuse(file, mode="r", *args, **kwargs):  # what open() does in a read-only directory (tests run as root)
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(writing, "open", refuse, raising=False)  # save_checkpoint writes with it
    with pytest.raises(UserError, match=r"could not write checkpoint .*last\.pt: Permission denied"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_parent_that_is_a_file_is_a_user_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match=r"^could not write checkpoint .*file/last\.pt: "):
        save_checkpoint({"step": 1}, blocker / "last.pt")


class DiskFullFile:
    """A real file whose writes fail with ENOSPC once `limit` bytes are written, like a full disk."""

    def __init__(self, path, mode, limit: int = 2000):
        self.handle, self.limit, self.written = open(path, mode), limit, 0  # noqa: SIM115 (closed in __exit__)

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_disk_full_mid_write_is_a_user_error_and_cleans_up(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr(writing, "open", DiskFullFile, raising=False)  # save_checkpoint writes with it
    try:
        with pytest.raises(
            UserError,
            # torch reports the failed write in its own words, not as ENOSPC
            match=r"^could not write checkpoint .*last\.pt: .+; the previous checkpoint is kept$",
        ):
            save_checkpoint({"step": 2, "model": {"w": torch.zeros(10_000)}}, path)
    finally:
        monkeypatch.undo()
        assert path.read_bytes() == before  # holds even today: the rename never happens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# --- the schema and the migration of older formats --------------------------------------------------


def weights_checkpoint(step: int = 3) -> WeightsCheckpoint:
    return WeightsCheckpoint(
        config={"name": "x"}, tokenizer={"src_model": b"a", "tgt_model": b"a"}, model={"w": torch.ones(2)}, step=step
    )


def test_both_kinds_round_trip_through_a_file(tmp_path: Path):
    weights = weights_checkpoint()
    save(weights, tmp_path / "best.pt")
    loaded = read_weights(tmp_path / "best.pt")
    assert loaded.step == 3 and loaded.config == {"name": "x"} and torch.equal(loaded.model["w"], torch.ones(2))
    assert load_checkpoint(tmp_path / "best.pt")["contents"] == "weights"
    state = TrainingState(step=3, epoch=1, skipped_updates=2, best_bleu=12.5)
    training = TrainingCheckpoint(weights, {"state": {}, "param_groups": []}, {"plateau_scale": 1.0}, state, {"x": 1})
    save(training, tmp_path / "last.pt")
    resumed = read_training(tmp_path / "last.pt")
    assert resumed.state == state and resumed.schedule == {"plateau_scale": 1.0} and resumed.weights.step == 3
    with pytest.raises(UserError, match=r"best.pt holds no training state \(optimizer, schedule, training_state, rng"):
        read_training(tmp_path / "best.pt")


def test_a_checkpoint_without_weights_says_what_is_missing(tmp_path: Path):
    save_checkpoint({"config": {}, "step": 1}, tmp_path / "odd.pt")
    with pytest.raises(UserError, match=r"odd.pt is not a complete seq2seq checkpoint \(tokenizer, model missing\)"):
        read_weights(tmp_path / "odd.pt")


def format_1_payload() -> dict:
    """A resumable checkpoint as format 1 wrote it (the keys that changed)."""
    weights = {"embedding.weight": torch.ones(3, 2), "layer.weight": torch.ones(2, 2), "layer.bias": torch.zeros(2)}
    return {
        "kind": KIND,
        "format_version": 1,
        "config": {
            "model": {"attention": {"type": "additive", "heads": 4, "max_source_length": 128}},
            "train": {"lr": 0.1, "max_output_ratio": 2.0},
        },
        "tokenizer": {},
        "model": weights,
        "optimizer": {
            "state": {0: {"exp_avg": torch.full((3, 2), 1.0)}, 2: {"exp_avg": torch.full((2,), 3.0)}},
            "param_groups": [{"lr": 0.1, "weight_decay": 0.01, "params": [0, 1, 2]}],
        },
        "schedule": {},
        "training_state": {"step": 7, "bad_steps": 2, "consecutive_bad": 1, "history": [{"step": 5}]},
        "rng": {},
    }


def test_format_1_is_migrated_when_read(tmp_path: Path):
    torch.save(format_1_payload(), tmp_path / "v1.pt")
    payload = load_checkpoint(tmp_path / "v1.pt")
    assert (payload["format_version"], payload["migrated_from"], payload["contents"]) == (FORMAT_VERSION, 1, "training")
    assert payload["training_state"] == {"step": 7, "skipped_updates": 2, "skipped_in_a_row": 1}
    assert payload["config"]["model"]["attention"] == {"type": "additive"}
    assert (
        payload["config"]["decode"] == {"max_output_ratio": 2.0}
        and "max_output_ratio" not in payload["config"]["train"]
    )
    # One parameter group became two: weight matrices (decayed) first, then the bias; the state follows its parameter.
    groups = payload["optimizer"]["param_groups"]
    assert [(g["params"], g["weight_decay"]) for g in groups] == [([0, 1], 0.01), ([2], 0.0)]
    assert torch.equal(payload["optimizer"]["state"][0]["exp_avg"], torch.full((3, 2), 1.0))
    assert torch.equal(payload["optimizer"]["state"][2]["exp_avg"], torch.full((2,), 3.0))
    assert read_training(tmp_path / "v1.pt").state.skipped_updates == 2


def test_a_format_older_than_any_migration_is_refused(tmp_path: Path):
    torch.save({"kind": KIND, "format_version": 0}, tmp_path / "v0.pt")
    with pytest.raises(UserError, match=r"v0.pt has checkpoint format 0, older than any this seq2seq reads \(1\)"):
        load_checkpoint(tmp_path / "v0.pt")
