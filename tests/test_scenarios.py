"""End-to-end scenarios in child processes: a run killed with SIGKILL, stopped by SIGTERM or Ctrl-C, or
killed while writing a checkpoint resumes bit for bit; the interactive translation prompt in a terminal.

All slow: each launches `python -m seq2seq` and waits for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pexpect
import pytest
import torch
from helpers import (
    SUBPROCESS_ENV,
    assert_same_weights,
    lines_written,
    regularised_toy_config,
    run_seq2seq,
    seq2seq_process,
    wait_until,
    write_toy_corpus,
    write_yaml,
)

from seq2seq.checkpoint import load_checkpoint
from seq2seq.cli import main
from seq2seq.config import config_from_dict
from seq2seq.errors import UserError
from seq2seq.rundir import read_records
from seq2seq.train import train
from seq2seq.translate import SHADES, attention_heatmap

pytestmark = pytest.mark.slow

# --- runs killed from outside ------------------------------------------------------------------------

REF_STEPS = 16  # 5 to 6 epochs of 3 batches
VALIDATE_EVERY = 4  # last.pt is rewritten often (each validation also draws curves.png: 0.4 s)


def robust_config(directory: Path, corpus: dict, run: str, max_steps: int = REF_STEPS) -> dict:
    """Dropout and label smoothing on (every RNG matters), frequent checkpoints, a small dev set."""
    config = regularised_toy_config(directory, corpus, run, max_steps)
    config["data"]["dev"] = corpus["dev"]
    config["train"].update(validate_every=VALIDATE_EVERY, validate_max_sentences=6)
    return config


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """The toy corpus and the final weights of an uninterrupted run of `robust_config`."""
    directory = tmp_path_factory.mktemp("robust")
    corpus = write_toy_corpus(directory)
    train(config_from_dict(robust_config(directory, corpus, "reference")))
    reference = torch.load(directory / "reference" / "last.pt", weights_only=True)
    assert reference["step"] == REF_STEPS
    return {"dir": directory, "corpus": corpus, "weights": reference["model"]}


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
    resumed = run_seq2seq("train", config, "--resume", cwd=directory, timeout=300)
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
        env=SUBPROCESS_ENV,
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
        steps = [record["step"] for record in read_records(run_dir / name)]
        assert steps == sorted(set(steps)), f"{name}: {steps}"


# --- translate: interactive mode in a pseudo-terminal ------------------------------------------------


def test_interactive_prompt_translates_and_draws_attention(toy_model, translator, corpus, tmp_path: Path):
    import matplotlib

    line = corpus[0][5]
    (translation,) = translator.translate([line])
    expected = translation.best.text
    heatmap = attention_heatmap(translation.source_pieces, translation.best.pieces, translation.best.attention)
    assert expected and any(shade in heatmap for shade in SHADES[1:])
    home, png_dir = tmp_path / "home", tmp_path / "png"
    home.mkdir()
    env = {
        **SUBPROCESS_ENV,
        "HOME": str(home),  # the readline history file goes here
        "TERM": "dumb",
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", matplotlib.get_cachedir()),  # no font cache rebuild
    }
    child = pexpect.spawn(
        sys.executable,
        ["-m", "seq2seq", "translate", str(toy_model["checkpoint"]), "--attention-png", str(png_dir)],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=30,
        dimensions=(50, 200),
    )
    try:
        child.expect_exact("Translating es -> en. Type a sentence and press Enter; Ctrl-D or :q quits.")
        child.expect_exact("> ")
        child.sendline(line)
        child.expect_exact(f"\r\n{expected}\r\n")
        child.expect_exact(heatmap.replace("\n", "\r\n"))
        child.expect(r"\(attention saved to (\S+)\)")
        saved = Path(child.match.group(1))
        child.expect_exact("> ")
        child.sendline("")  # an empty line is ignored: the prompt comes back
        child.expect_exact("> ")
        child.sendline(":q")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    assert saved == png_dir / "attention-001.png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert line in (home / ".seq2seq_history").read_text(encoding="utf-8")
