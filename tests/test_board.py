"""TensorBoard logging (seq2seq/board.py, train.tensorboard): the event files of a run hold its progress and
validation records as scalars and the attention of three dev sentences as images; a resumed run leaves one
value per step; without the tensorboard package a run stops with one line before touching anything."""

from __future__ import annotations

import io
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_toy_config, one_line_error, write_config, write_toy_corpus
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seq2seq.cli import main
from seq2seq.config import config_from_dict
from seq2seq.rundir import read_records
from seq2seq.train import train
from seq2seq.validation import example_sentences, make_dev_set

PROGRESS_TAGS = {
    "train/loss": "train_loss",
    "train/learning_rate": "lr",
    "train/tokens_per_second": "tokens_per_s",
    "train/gradient_norm": "grad_norm",
}
VALIDATION_TAGS = {"dev/loss": "dev_loss", "dev/perplexity": "dev_ppl", "dev/bleu": "dev_bleu"}
IMAGE_TAGS = {f"attention/example_{n}" for n in (1, 2, 3)}
PNG = b"\x89PNG\r\n\x1a\n"
MISSING_PACKAGE = (
    "seq2seq: error: train.tensorboard: true needs the tensorboard package: pip install -e '.[tensorboard]' "
    "(or set train.tensorboard: false)"
)


def board_config(directory: Path, max_steps: int = 8) -> dict:
    """The toy corpus with a dev set: progress every 2 steps, validation every 4, TensorBoard on."""
    config = make_toy_config(directory, write_toy_corpus(directory))
    config["train"].update(max_steps=max_steps, validate_every=4, log_every=2, tensorboard=True)
    return config


def events(run_dir: Path) -> EventAccumulator:
    """Every event of the run directory's TensorBoard files, as TensorBoard shows them (purges applied)."""
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def assert_scalars_match_records(board: EventAccumulator, run_dir: Path) -> None:
    """Each scalar tag holds one value per record, at the record's step, equal to the record's value (float32)."""
    for records, tags in (
        (read_records(run_dir / "progress.jsonl"), PROGRESS_TAGS),
        (read_records(run_dir / "metrics.jsonl"), VALIDATION_TAGS),
    ):
        for tag, key in tags.items():
            scalars = board.Scalars(tag)
            assert [s.step for s in scalars] == [r["step"] for r in records], tag
            assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6), tag


def test_event_files_hold_the_records_and_attention_images(tmp_path: Path):
    config = board_config(tmp_path)
    train(config_from_dict(config))
    run_dir = Path(config["train"]["run_dir"])
    board = events(run_dir)
    assert set(board.Tags()["scalars"]) == set(PROGRESS_TAGS) | set(VALIDATION_TAGS)
    assert set(board.Tags()["images"]) == IMAGE_TAGS
    progress, metrics = read_records(run_dir / "progress.jsonl"), read_records(run_dir / "metrics.jsonl")
    assert [r["step"] for r in progress] == [2, 4, 6, 8] and [r["step"] for r in metrics] == [4, 8]
    assert all(r["grad_norm"] > 0 for r in progress)  # progress records carry the gradient norm
    assert_scalars_match_records(board, run_dir)
    # dev/bleu is metrics.jsonl's dev_bleu, exactly (as a float32)
    assert [s.value for s in board.Scalars("dev/bleu")] == [float(np.float32(r["dev_bleu"])) for r in metrics]
    for tag in IMAGE_TAGS:
        images = board.Images(tag)
        assert [i.step for i in images] == [4, 8], tag
        for image in images:
            assert image.encoded_image_string.startswith(PNG)
            decoded = Image.open(io.BytesIO(image.encoded_image_string))
            assert decoded.format == "PNG" and decoded.size == (image.width, image.height)
            assert image.width > 100 and image.height > 100


def test_examples_are_the_first_three_dev_sentences_of_5_to_40_pieces(tokenizer):
    word = "casa"
    src = [
        word,  # too short
        " ".join([word] * 5),  # the first example ...
        " ".join([word] * 100),  # too long
        " ".join([word] * 6),  # ... (its reference is empty: skipped)
        " ".join([word] * 7),
        " ".join([word] * 8),
        " ".join([word] * 9),  # a fourth: not needed
    ]
    ref = ["r"] * len(src)
    ref[3] = ""
    dev = make_dev_set(src, ref, tokenizer, 2000)
    chosen = example_sentences(dev, tokenizer, 3)
    assert [index for index, _ in chosen] == [1, 4, 5]
    encoded = tokenizer.encode_src(src)
    assert [ids for _, ids in chosen] == [encoded[i] for i in (1, 4, 5)]
    assert all(5 <= len(encoded[i]) <= 40 for i in (1, 4, 5))
    assert example_sentences(dev, tokenizer, 0) == [] and example_sentences(None, tokenizer, 3) == []


def wait_for_a_new_second(directory: Path) -> None:
    """TensorBoard reads event files in name order, and a name starts with its creation second: let the next
    file's second differ from the newest one's, so that it sorts last."""
    newest = max(int(path.name.split(".")[3]) for path in directory.glob("events.out.tfevents.*"))
    while int(time.time()) <= newest:
        time.sleep(0.05)


def test_a_resumed_run_leaves_one_value_per_step(tmp_path: Path):
    """A crash after step 8 whose last.pt is from step 4: the rerun's values replace the lost part's."""
    config = board_config(tmp_path)
    run_dir = Path(config["train"]["run_dir"])
    config["train"]["max_steps"] = 4
    train(config_from_dict(config))
    shutil.copyfile(run_dir / "last.pt", tmp_path / "last-at-4.pt")
    config["train"]["max_steps"] = 8
    wait_for_a_new_second(run_dir / "tensorboard")
    train(config_from_dict(config), resume=True)
    lost_speeds = [r["tokens_per_s"] for r in read_records(run_dir / "progress.jsonl")]
    shutil.copyfile(tmp_path / "last-at-4.pt", run_dir / "last.pt")  # the crash: steps 5 to 8 are lost
    wait_for_a_new_second(run_dir / "tensorboard")
    train(config_from_dict(config), resume=True)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 3
    progress = read_records(run_dir / "progress.jsonl")
    assert [r["step"] for r in progress] == [2, 4, 6, 8]
    assert [r["tokens_per_s"] for r in progress[2:]] != lost_speeds[2:], "the rerun should differ in speed"
    board = events(run_dir)
    assert_scalars_match_records(board, run_dir)  # one value per step, the rerun's where steps were lost
    for tag in IMAGE_TAGS:
        assert [i.step for i in board.Images(tag)] == [4, 8]


def test_a_new_run_in_the_same_directory_drops_the_old_event_files(tmp_path: Path):
    config = board_config(tmp_path, max_steps=4)
    train(config_from_dict(config))
    config["train"]["max_steps"] = 2
    train(config_from_dict(config), force=True)
    run_dir = Path(config["train"]["run_dir"])
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    board = events(run_dir)
    assert [s.step for s in board.Scalars("train/loss")] == [2]
    for tag in IMAGE_TAGS:  # the old run's validation at step 4 is gone
        assert [i.step for i in board.Images(tag)] == [2]


def test_without_tensorboard_setting_no_event_files_are_written(tmp_path: Path):
    config = board_config(tmp_path, max_steps=4)
    config["train"]["tensorboard"] = False
    train(config_from_dict(config))
    run_dir = Path(config["train"]["run_dir"])
    assert (run_dir / "last.pt").is_file() and not (run_dir / "tensorboard").exists()
    assert all("grad_norm" in r for r in read_records(run_dir / "progress.jsonl"))


@pytest.fixture
def no_tensorboard(monkeypatch):
    """Imports of the tensorboard package (and torch's writer, which needs it) fail as if it were not installed."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)


def snapshot(directory: Path) -> dict[Path, tuple[int, bytes]]:
    """Every file's time and bytes, but the run directory's lock (each attempt takes and releases it)."""
    files = (p for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock")
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def test_without_the_package_a_run_stops_with_one_line_before_writing_anything(tmp_path: Path, capsys, no_tensorboard):
    config = board_config(tmp_path)
    path = write_config(tmp_path, config)
    before = snapshot(tmp_path)
    assert main(["train", path]) == 2
    assert one_line_error(capsys) == MISSING_PACKAGE
    assert not Path(config["train"]["run_dir"]).exists()
    assert not Path(config["data"]["cache_dir"]).exists()
    assert snapshot(tmp_path) == before


def test_without_the_package_a_resume_leaves_the_run_untouched(tmp_path: Path, capsys, monkeypatch):
    config = board_config(tmp_path, max_steps=2)
    config["train"]["tensorboard"] = False
    path = write_config(tmp_path, config)
    assert main(["train", path]) == 0
    capsys.readouterr()
    run_dir = Path(config["train"]["run_dir"])
    before = snapshot(run_dir)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["train", path, "--resume", "--set", "train.tensorboard=true", "--set", "train.max_steps=4"]) == 2
    assert one_line_error(capsys) == MISSING_PACKAGE
    assert snapshot(run_dir) == before
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 2
