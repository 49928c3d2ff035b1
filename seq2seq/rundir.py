"""A run directory: every file a training run writes, named here and nowhere else.

    config.yaml      the resolved config          train.log        the log
    metrics.jsonl    one record per validation    progress.jsonl   one record per log interval
    curves.png       the training curves          summary.json     the final summary
    last.pt          the resume point             best.pt          the best dev BLEU
    step-NNNNNNN.pt  the latest validations       spm.*.model      the SentencePiece model(s)
    test.hyp         compare's test translations     tensorboard/     TensorBoard event files

`RunDir` also does the checks on starting or resuming a run there, the lock that keeps a second
run out (`.lock`, holding the writer's pid), the JSON-lines records (append, read, truncate after a
crash) and attaching the run's log file. Every write fails as one clear line and leaves the file
whole (seq2seq/writing.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from seq2seq.config import Config, config_from_dict, config_to_dict
from seq2seq.errors import UserError
from seq2seq.locks import LockBusy, describe_owner, exclusive
from seq2seq.tokenizer import Tokenizer
from seq2seq.writing import append_line, make_directory, write_atomically, write_error

log = logging.getLogger(__name__)

STEP_CHECKPOINTS = "step-*.pt"
RUN_LIMITS = ("max_steps", "max_epochs", "max_time", "tensorboard")  # train keys that may change on resuming
TRAINING_DECODE_KEYS = ("max_output_ratio",)  # the decode keys validation uses: the others may change too


class RunDir:
    """The files of one training run, in one directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.log = self.path / "train.log"
        self.metrics = self.path / "metrics.jsonl"
        self.progress = self.path / "progress.jsonl"
        self.curves = self.path / "curves.png"
        self.summary = self.path / "summary.json"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.test_hypotheses = self.path / "test.hyp"  # written by `seq2seq compare`
        self.tensorboard = self.path / "tensorboard"
        self.lock_file = self.path / ".lock"

    def __str__(self) -> str:
        return str(self.path)

    def step_checkpoint(self, step: int) -> Path:
        """The weights checkpoint of update `step`."""
        return self.path / f"step-{step:07d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """The step checkpoints present, oldest first."""
        return sorted(self.path.glob(STEP_CHECKPOINTS))

    def newest_step_checkpoints(self, count: int) -> list[Path]:
        """The `count` newest step checkpoints, oldest first; a UserError if there are fewer."""
        found = self.step_checkpoints()
        if not found:
            raise UserError(f"no {STEP_CHECKPOINTS} checkpoints in {self.path} (train.keep_checkpoints must be > 0)")
        if len(found) < count:
            raise UserError(f"{self.path} holds only {len(found)} step checkpoints, fewer than the {count} asked for")
        return found[-count:]

    # --- starting and resuming ------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Be the one writer of this directory while the block runs (created if needed).

        A run holding it already makes this one clear line naming its pid; a lock left by a process that
        died is taken over with a warning. A directory created here for a run that then failed its checks
        is removed again.
        """
        created = not self.path.exists()
        make_directory(self.path, "train.run_dir")
        try:
            with exclusive(self.lock_file, wait=False) as previous:
                if previous:
                    log.warning(
                        "Took over %s from %s, which ended without releasing it",
                        self.lock_file,
                        describe_owner(previous),
                    )
                try:
                    yield
                finally:
                    if created:
                        self._remove_if_only_the_lock()  # still holding the lock: no other run is in there
        except LockBusy as busy:
            raise UserError(
                f"{self.path} is in use by another training run ({busy}): wait for it to finish or stop it, "
                "or choose another train.run_dir"
            ) from None

    def _remove_if_only_the_lock(self) -> None:
        """Undo the directory a run created before failing its checks (nothing but the lock file in it)."""
        with contextlib.suppress(OSError):
            if [p.name for p in self.path.iterdir()] == [self.lock_file.name]:
                self.lock_file.unlink()
                self.path.rmdir()

    def check_can_start(self, resume: bool, force: bool) -> None:
        """A new run must not overwrite one unless forced; a resumed one needs last.pt."""
        if resume and not self.last.is_file():
            raise UserError(f"nothing to resume: {self.last} does not exist (train without --resume to start the run)")
        if not resume and self.last.is_file() and not force:
            raise UserError(
                f"{self.path} already holds a run: add --resume to continue it, choose another "
                "train.run_dir, or add --force to start over there"
            )

    def check_same_run(self, stored_config: Any, config: Config, force: bool) -> None:
        """Resuming needs the config the run was started with (only the run limits may change).

        Both are compared resolved, so an option added since the run started counts with its default.
        """
        if force:
            return
        try:
            stored = config_to_dict(config_from_dict(stored_config))
        except UserError:
            stored = None
        if stored is None or _without_run_limits(stored) != _without_run_limits(config_to_dict(config)):
            raise UserError(
                f"{self.path} holds a run of a different config: resume with the same config (only "
                "train.max_steps/max_epochs/max_time/tensorboard and decode options other than max_output_ratio "
                "may change) "
                "or add --force"
            )

    def prepare(self, config: Config, resume: bool) -> None:
        """Create the directory, drop a previous run's records (unless resuming) and write the config."""
        make_directory(self.path, "train.run_dir")
        if not resume:  # starting over (--force): a crash before the first save must not resume the old run
            for stale in (self.metrics, self.progress, self.last):
                stale.unlink(missing_ok=True)
            shutil.rmtree(self.tensorboard, ignore_errors=True)
        write_atomically(self.config, yaml.safe_dump(config_to_dict(config), sort_keys=False))

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Write the SentencePiece model(s): spm.joint.model, or spm.src.model and spm.tgt.model."""
        state = tokenizer.state_dict()
        if tokenizer.joint:
            files = {"spm.joint.model": state["src_model"]}
        else:
            files = {"spm.src.model": state["src_model"], "spm.tgt.model": state["tgt_model"]}
        for name, model in files.items():
            write_atomically(self.path / name, model)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """summary.json: how the run ended."""
        write_atomically(self.summary, json.dumps(summary, indent=2) + "\n")

    # --- records ----------------------------------------------------------------------------------

    def truncate_records(self, last_step: int) -> None:
        """Keep only records of steps up to `last_step`: later ones belong to the part of a run that was lost."""
        for path in (self.metrics, self.progress):
            if path.is_file():
                kept = [record for record in read_records(path) if record.get("step", 0) <= last_step]
                write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))

    def attach_log(self) -> logging.Handler:
        """Copy the package's INFO log into train.log (also when no CLI set logging up)."""
        handler = RunLogHandler(self.log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        package = logging.getLogger("seq2seq")
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)
        package.addHandler(handler)
        return handler


class RunLogHandler(logging.FileHandler):
    """train.log, where a failed write (a full disk) stops the run with one clear line, not logging's traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            raise write_error(Path(self.baseFilename), error, "the log so far is kept") from None
        super().handleError(record)


def detach_log(handler: logging.Handler | None) -> None:
    """Undo `RunDir.attach_log`."""
    if handler is not None:
        logging.getLogger("seq2seq").removeHandler(handler)
        with contextlib.suppress(OSError):  # a full disk: the failed write was reported, its line is lost
            handler.close()


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (whole, or not at all: a UserError)."""
    append_line(path, json.dumps(record))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file ([] when it does not exist)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # blank, or the last line of a run killed mid-write
    return records


def _without_run_limits(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that may change between a run and its resumption."""
    train = {k: v for k, v in config["train"].items() if k not in RUN_LIMITS}
    decode = {k: v for k, v in config.get("decode", {}).items() if k in TRAINING_DECODE_KEYS}
    return {**config, "train": train, "decode": decode}
