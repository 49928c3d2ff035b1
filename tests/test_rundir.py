"""The run directory: file names, start and resume checks, records, the run's log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import DATA, head, make_toy_config, write_toy_corpus

from seq2seq.config import TokenizerConfig, config_from_dict, load_config
from seq2seq.errors import UserError
from seq2seq.rundir import RunDir, append_record, detach_log, read_records
from seq2seq.tokenizer import Tokenizer, train_sentencepiece


@pytest.fixture
def config(tmp_path: Path):
    return config_from_dict(make_toy_config(tmp_path, write_toy_corpus(tmp_path)))


def test_step_checkpoints_are_named_by_step_and_listed_oldest_first(tmp_path: Path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    for step in (300, 20, 1000):
        run_dir.step_checkpoint(step).write_bytes(b"")
    assert run_dir.step_checkpoint(20).name == "step-0000020.pt"
    assert [p.name for p in run_dir.step_checkpoints()] == ["step-0000020.pt", "step-0000300.pt", "step-0001000.pt"]
    assert [p.name for p in run_dir.newest_step_checkpoints(2)] == ["step-0000300.pt", "step-0001000.pt"]
    with pytest.raises(UserError, match=r"holds only 3 step checkpoints, fewer than the 5 asked for"):
        run_dir.newest_step_checkpoints(5)


def test_no_step_checkpoints_says_which_setting_keeps_them(tmp_path: Path):
    with pytest.raises(UserError, match=r"no step-\*\.pt checkpoints in .* \(train.keep_checkpoints must be > 0\)"):
        RunDir(tmp_path).newest_step_checkpoints(1)


def test_a_new_run_never_overwrites_one_unless_forced(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    run_dir.check_can_start(resume=False, force=False)  # empty: fine
    with pytest.raises(UserError, match="nothing to resume: .*last.pt does not exist"):
        run_dir.check_can_start(resume=True, force=False)
    run_dir.last.write_bytes(b"x")
    with pytest.raises(UserError, match="already holds a run: add --resume to continue it, .* or add --force"):
        run_dir.check_can_start(resume=False, force=False)
    run_dir.check_can_start(resume=False, force=True)
    run_dir.check_can_start(resume=True, force=False)


def test_starting_over_with_force_drops_the_old_resume_point(tmp_path: Path, config):
    """Else a crash before the new run's first save, then --resume (or a torchrun restart), continues the old run."""
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    for old in (run_dir.last, run_dir.best, run_dir.metrics):
        old.write_bytes(b"the old run")
    run_dir.prepare(config, resume=False)
    assert not run_dir.last.exists() and not run_dir.metrics.exists()
    assert run_dir.best.read_bytes() == b"the old run"  # replaced only when the new run has a better one
    run_dir.last.write_bytes(b"the new run")
    run_dir.prepare(config, resume=True)
    assert run_dir.last.read_bytes() == b"the new run"


def test_resuming_needs_the_same_config_but_the_run_limits_may_change(tmp_path: Path, config):
    from seq2seq.config import config_to_dict

    run_dir = RunDir(tmp_path / "run")
    stored = config_to_dict(config)
    longer = config_to_dict(config)
    longer["train"].update(max_steps=500, max_time="1h")
    run_dir.check_same_run(stored, config_from_dict(longer), force=False)
    other = config_to_dict(config)
    other["train"]["lr"] = 0.5
    with pytest.raises(UserError, match="holds a run of a different config: resume with the same config"):
        run_dir.check_same_run(stored, config_from_dict(other), force=False)
    with pytest.raises(UserError, match="holds a run of a different config"):
        run_dir.check_same_run({"not": "a config"}, config, force=False)
    run_dir.check_same_run(stored, config_from_dict(other), force=True)
    decoding = config_to_dict(config)
    decoding["decode"].update(beam=2, alpha=0.3, n_best=4)  # evaluate's defaults: they do not touch training
    run_dir.check_same_run(stored, config_from_dict(decoding), force=False)
    decoding["decode"]["max_output_ratio"] = 3.0  # validation decodes with it
    with pytest.raises(UserError, match="holds a run of a different config"):
        run_dir.check_same_run(stored, config_from_dict(decoding), force=False)


def test_a_stored_config_is_compared_with_its_defaults_filled_in(tmp_path: Path, config):
    """A checkpoint's config written before an option existed still matches the same run's config."""
    from seq2seq.config import config_to_dict

    stored = config_to_dict(config)
    del stored["decode"]  # as an older seq2seq wrote it: no decode section
    RunDir(tmp_path).check_same_run(stored, config, force=False)


def test_prepare_writes_the_config_and_clears_a_previous_runs_records_unless_resuming(tmp_path: Path, config):
    run_dir = RunDir(tmp_path / "run")
    run_dir.prepare(config, resume=False)
    assert load_config(run_dir.config) == config
    append_record(run_dir.metrics, {"step": 1})
    append_record(run_dir.progress, {"step": 1})
    run_dir.prepare(config, resume=True)
    assert read_records(run_dir.metrics) == [{"step": 1}]
    run_dir.prepare(config, resume=False)
    assert not run_dir.metrics.exists() and not run_dir.progress.exists()


def test_records_after_a_checkpoint_are_dropped_on_resume_with_a_line_cut_short(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    for step in (10, 20, 30):
        append_record(run_dir.metrics, {"step": step})
    with open(run_dir.metrics, "a", encoding="utf-8") as handle:
        handle.write('{"step": 40, "dev_')  # killed mid-write
    assert [r["step"] for r in read_records(run_dir.metrics)] == [10, 20, 30]
    run_dir.truncate_records(20)
    assert [r["step"] for r in read_records(run_dir.metrics)] == [10, 20]
    assert read_records(tmp_path / "missing.jsonl") == []


def test_the_sentencepiece_models_are_written_by_name(tmp_path: Path, tokenizer: Tokenizer):
    run_dir = RunDir(tmp_path / "joint")
    run_dir.path.mkdir()
    run_dir.save_tokenizer(tokenizer)
    assert [p.name for p in run_dir.path.iterdir()] == ["spm.joint.model"]
    assert (run_dir.path / "spm.joint.model").read_bytes() == tokenizer.state_dict()["src_model"]
    english = train_sentencepiece(head(DATA / "train.en", 200), TokenizerConfig(vocab_size=200), seed=1)
    separate = Tokenizer(tokenizer.state_dict()["src_model"], english)
    run_dir = RunDir(tmp_path / "separate")
    run_dir.path.mkdir()
    run_dir.save_tokenizer(separate)
    assert sorted(p.name for p in run_dir.path.iterdir()) == ["spm.src.model", "spm.tgt.model"]
    assert (run_dir.path / "spm.tgt.model").read_bytes() == english


def test_the_run_log_receives_the_package_log_until_detached(tmp_path: Path):
    run_dir = RunDir(tmp_path)
    handler = run_dir.attach_log()
    logging.getLogger("seq2seq.test").info("first line")
    detach_log(handler)
    logging.getLogger("seq2seq.test").info("second line")
    text = run_dir.log.read_text()
    assert "first line" in text and "second line" not in text


# --- a full disk: /dev/full answers every write with "No space left on device" ---------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_record_that_cannot_be_written_is_one_line_and_the_records_file_keeps_its_lines(tmp_path: Path):
    from seq2seq.writing import append_line

    records = tmp_path / "metrics.jsonl"
    append_record(records, {"step": 1})
    append_line(records, '{"step": 2}')
    full = tmp_path / "full.jsonl"
    full.symlink_to("/dev/full")
    with pytest.raises(UserError, match=r"^could not write .*full.jsonl: No space left on device; its earlier"):
        append_record(full, {"step": 3})
    assert [record["step"] for record in read_records(records)] == [1, 2]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_log_line_that_cannot_be_written_stops_with_one_line_instead_of_loggings_traceback(tmp_path: Path):
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    run_dir.log.symlink_to("/dev/full")
    handler = run_dir.attach_log()
    try:
        with pytest.raises(UserError, match=r"^could not write .*train.log: No space left on device; the log so far"):
            logging.getLogger("seq2seq.train").info("a line for a full disk")
    finally:
        detach_log(handler)
