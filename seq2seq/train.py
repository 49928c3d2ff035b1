"""The training loop: updates, the stop decision every process agrees on, validation points, checkpoints.

`train(config)` builds the parts of a run with seq2seq.builders and hands them to a `Trainer`,
which only uses them. Every file it writes is named in seq2seq/rundir.py.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from seq2seq import builders
from seq2seq.allocator import keep_freed_memory
from seq2seq.board import TensorBoardLog, summary_writer_class
from seq2seq.checkpoint import (
    TrainingCheckpoint,
    TrainingState,
    WeightsCheckpoint,
    load_checkpoint,
    save,
    stored_config,
)
from seq2seq.config import Config, config_to_dict, parse_duration
from seq2seq.data import Batch, collate
from seq2seq.device import autocast, check_precision
from seq2seq.distributed import (
    ProcessGroup,
    any_process,
    barrier,
    broadcast_from_main,
    gather_objects,
    max_over_processes,
    shutdown,
    sum_over_processes,
)
from seq2seq.ema import WeightAverage
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq, count_parameters, sequence_loss
from seq2seq.plots import plot_training_curves
from seq2seq.rundir import RunDir, append_record, detach_log, read_records
from seq2seq.runinfo import run_record, timestamp
from seq2seq.schedule import LearningRateSchedule
from seq2seq.validation import Validator

log = logging.getLogger(__name__)

MAX_SKIPPED_IN_A_ROW = 10


class StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a polite stop after the current step; the second is immediate."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Stop requested: finishing this step and saving a checkpoint (press Ctrl-C again to quit now)")


@dataclass
class Interval:
    """Training loss, gradient norm and tokens since the last progress record; sums stay on the device until logged."""

    loss: torch.Tensor  # sum over updates of mean loss x target tokens
    grad_norm: torch.Tensor  # sum over applied updates of the gradient norm (before clipping)
    updates: int
    tokens: int
    pairs: int
    started: float

    @classmethod
    def starting(cls, device: torch.device) -> Interval:
        """An empty interval starting now."""
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return cls(zero, zero.clone(), 0, 0, 0, time.monotonic())


class Trainer:
    """Runs the updates of one training run with parts built elsewhere (seq2seq.builders)."""

    def __init__(
        self,
        config: Config,
        group: ProcessGroup,
        device: torch.device,
        model: Seq2Seq,
        train_model: torch.nn.Module,
        average: WeightAverage | None,
        optimizer: torch.optim.Optimizer,
        schedule: LearningRateSchedule,
        scaler: torch.amp.GradScaler,
        data: builders.TrainingData,
        validator: Validator,
        board: TensorBoardLog | None,
        run_dir: RunDir,
        state: TrainingState,
        run_info: dict,
    ):
        self.config, self.group, self.device = config, group, device
        self.model, self.train_model = model, train_model  # train_model: the model or its DDP wrapper
        self.average = average  # the weights' moving average (train.ema_decay), or None
        self.optimizer, self.schedule, self.scaler = optimizer, schedule, scaler
        self.data, self.validator, self.board, self.run_dir = data, validator, board, run_dir
        self.state, self.run_info = state, run_info  # run_info: the run's record (command, data, versions, origin)
        self.max_seconds = parse_duration(config.train.max_time) if config.train.max_time else None
        self.interval = Interval.starting(device)

    @property
    def evaluated_model(self) -> Seq2Seq:
        """The model validation scores and checkpoints give translating: the moving average when kept."""
        return self.average.model if self.average is not None else self.model

    def run(self) -> dict:
        """Train until a limit or early stopping; returns the summary."""
        start = time.monotonic() - self.state.elapsed
        quiet = None if self.group.is_main else True
        bar = tqdm(
            total=self.config.train.max_steps, initial=self.state.step, unit="step", dynamic_ncols=True, disable=quiet
        )
        with StopRequest() as stop:
            early = None
            if self.state.validation_due:  # stopped at a validation step without validating: do it now
                self.state.validation_due = False
                early = self._save_point(validate=True)
            stop_reason = early or self._limit_reached(False)  # a resumed run may already be at its limit
            self.interval.started = time.monotonic()  # validation time is not training speed
            while stop_reason is None:
                stop_reason = self._run_epoch(bar, stop, start)
        bar.close()
        barrier(self.group)  # leave together: a process tearing gloo down under another can abort it
        return self._finish(stop_reason)

    def _run_epoch(self, bar: tqdm, stop: StopRequest, start: float) -> str | None:
        """The rest of the current epoch; returns why to stop, or None to go on with the next epoch."""
        settings = self.config.train
        if settings.max_epochs is not None and self.state.epoch >= settings.max_epochs:
            return f"reached train.max_epochs ({settings.max_epochs})"
        self.data.sampler.set_epoch(self.state.epoch, self.state.batch_in_epoch)
        self.data.dataset.set_epoch(self.state.epoch)  # before the workers start: they copy the dataset
        loader = DataLoader(
            self.data.dataset,
            batch_sampler=self.data.sampler,
            collate_fn=collate,
            num_workers=self.data.loader_workers,
            generator=torch.Generator(),  # its own: drawing from the global RNG would change dropout on resume
        )
        for batches in _groups_of(loader, settings.accumulate_batches):
            stop_reason = self._update(batches, bar, stop, start)
            if stop_reason:
                return stop_reason
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        if settings.max_epochs is not None and self.state.epoch >= settings.max_epochs:
            if self.state.step % settings.validate_every:  # not validated at this step yet
                self._save_point(validate=True)
            return f"reached train.max_epochs ({settings.max_epochs})"
        return None

    def _update(self, batches: list[Batch], bar: tqdm, stop: StopRequest, start: float) -> str | None:
        """One update, its progress record, and a save point when one is due; returns why to stop, if so."""
        settings = self.config.train
        result = self._train_step([batch.to(self.device) for batch in batches])
        self.state.batch_in_epoch += len(batches)
        if result is not None:
            loss, grad_norm = result
            tokens = sum(batch.num_tgt_tokens for batch in batches)  # CPU batches: no device sync
            self.interval.loss += loss * tokens
            self.interval.grad_norm += grad_norm.double()
            self.interval.updates += 1
            self.interval.tokens += tokens
            self.interval.pairs += sum(len(batch.src_lengths) for batch in batches)
        self.state.elapsed = time.monotonic() - start
        bar.update(1)
        if self.state.step % settings.log_every == 0 and self.interval.tokens:
            self._log_progress(bar)
        stop_reason, interrupted = self._agreed_stop(stop.requested)
        if interrupted:  # save at once (validating could take minutes); the resumed run validates first if due
            due = self.state.step % settings.validate_every == 0 or self._limit_reached(False) is not None
            self.state.validation_due = due
            self._save_point(validate=False)
        elif self.state.step % settings.validate_every == 0 or stop_reason:
            early = self._save_point(validate=True)  # always: it also writes the checkpoints
            stop_reason = stop_reason or early
            self.interval.started = time.monotonic()  # validation time is not training speed
        return stop_reason

    def _train_step(self, batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One update from the gradients of `batches` (averaged); the mean loss and the gradient norm before
        clipping (on the device), or None if the update was skipped."""
        self.model.train()
        self.state.step += 1
        lr = self.schedule.lr(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            # With DDP, gradients are averaged across processes once, after the last batch.
            ddp = self.train_model if self.group.active and not last else None
            synchronise = cast(DistributedDataParallel, ddp).no_sync() if ddp is not None else contextlib.nullcontext()
            with synchronise:
                with autocast(self.device, self.config.train.precision):
                    loss = sequence_loss(self.train_model, batch, self.config.train.label_smoothing) / len(batches)
                self.scaler.scale(loss).backward()  # the scaler only scales with fp16
            total += loss.detach().double()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.train.clip_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else math.inf)
        # The one host sync of an update: a non-finite update must be known before it is applied.
        if not bool(torch.isfinite(total) & torch.isfinite(grad_norm)):
            self._skip_update()
            return None
        self.state.skipped_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model, self.state.step)
        return total, grad_norm

    def _skip_update(self) -> None:
        """Count an update skipped for a non-finite loss or gradient; too many in a row end the run."""
        self.scaler.update()  # fp16: a smaller scale next time
        self.state.skipped_updates += 1
        self.state.skipped_in_a_row += 1
        count = self.state.skipped_updates
        log.warning("Step %d: non-finite loss or gradient, update skipped (%d so far)", self.state.step, count)
        if self.state.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise UserError(
                f"{MAX_SKIPPED_IN_A_ROW} updates in a row had a non-finite loss or gradient: the run diverged; "
                f"lower train.lr or set train.clip_grad_norm (last good checkpoint: {self.run_dir.last})"
            )

    def _limit_reached(self, stop_requested: bool) -> str | None:
        limits = self.config.train
        if stop_requested:
            return "interrupted"
        if limits.max_steps is not None and self.state.step >= limits.max_steps:
            return f"reached train.max_steps ({limits.max_steps})"
        if self.max_seconds is not None and self.state.elapsed >= self.max_seconds:
            return f"reached train.max_time ({limits.max_time})"
        return None

    def _agreed_stop(self, stop_requested: bool) -> tuple[str | None, bool]:
        """Why to stop now (or None), and whether it is an interruption; all processes agree."""
        reason = self._limit_reached(stop_requested)
        if not self.group.active:
            return reason, reason == "interrupted"
        # One all-reduce per step: 2 = some process was interrupted, 1 = one reached a limit, 0 = go on.
        code = max_over_processes(self.group, 2 if reason == "interrupted" else int(reason is not None))
        if code == 2:
            return "interrupted", True
        if code == 1:
            return reason or "another process reached a limit", False
        return None, False

    def _log_progress(self, bar: tqdm) -> None:
        """Record loss and speed over the last interval (summed over all processes)."""
        seconds = time.monotonic() - self.interval.started
        totals = [self.interval.loss.item(), float(self.interval.tokens), float(self.interval.pairs)]
        loss_sum, tokens, pairs = sum_over_processes(self.group, totals)
        grad_norm = self.interval.grad_norm.item() / max(self.interval.updates, 1)  # the same on every process
        self.interval = Interval.starting(self.device)
        if not self.group.is_main:
            return
        loss, tokens_per_second = loss_sum / max(tokens, 1.0), tokens / seconds
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:,.0f}", lr=f"{lr:.2e}", refresh=False)
        record = {
            "step": self.state.step,
            "epoch": self.state.epoch + 1,
            "minutes": round(self.state.elapsed / 60, 3),
            "train_loss": round(loss, 4),
            "tokens_per_s": round(tokens_per_second, 1),
            "sentences_per_s": round(pairs / seconds, 2),
            "lr": lr,
            "grad_norm": round(grad_norm, 4),
        }
        append_record(self.run_dir.progress, record)
        if self.board is not None:
            self.board.progress(record)
        log.debug("step %d loss %.4f tok/s %.0f lr %.2e", self.state.step, loss, tokens_per_second, lr)

    # --- save points: validation and checkpoints ---------------------------------------------------

    def _save_point(self, validate: bool) -> str | None:
        """Every process calls this together: the main one validates (if asked) and writes checkpoints.

        Returns a reason to stop early, which all processes then share.
        """
        rng = {"python": random.getstate(), "torch": gather_objects(self.group, torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = gather_objects(self.group, torch.cuda.get_rng_state(self.device))
        early = None
        if self.group.is_main:
            if validate:
                with autocast(self.device, self.config.train.precision):
                    early = self._validate_and_save(rng)
            else:
                self._save_checkpoints(False, rng)
        barrier(self.group)
        if self.group.active:  # the plateau schedule changed on the main process only
            self.schedule.load_state_dict(cast(dict, broadcast_from_main(self.group, self.schedule.state_dict())))
        if any_process(self.group, early is not None):
            return early or "early stopping (decided by the main process)"
        return None

    def _validate_and_save(self, rng: dict) -> str | None:
        """Validate, write metrics, plots and checkpoints; returns a reason to stop early, if any."""
        record, improved = self.validator.validate(self.evaluated_model, self.state)
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        if "dev_bleu" in record and self.schedule.on_validation(record["dev_bleu"]):
            log.info("Dev BLEU stopped improving: learning rate scale now %.3g", self.schedule.plateau_scale)
        append_record(self.run_dir.metrics, record)
        if self.board is not None:
            self.board.validation(record, self.validator.examples)
        self._save_checkpoints(improved, rng)
        progress, metrics = read_records(self.run_dir.progress), read_records(self.run_dir.metrics)
        plot_training_curves(progress, metrics, self.run_dir.curves, self.run_dir.path.name)
        return self.validator.early_stop(self.state)

    def _save_checkpoints(self, is_best: bool, rng: dict) -> None:
        if self.state.skipped_in_a_row:
            log.warning("Not saving at step %d: the last update was skipped as non-finite", self.state.step)
            return
        weights = WeightsCheckpoint(
            config=config_to_dict(self.config),
            tokenizer=self.data.tokenizer.state_dict(),
            model=self.evaluated_model.state_dict(),
            step=self.state.step,
            best_bleu=self.state.best_bleu,
            run=self.run_info | {"saved_at": timestamp()},
        )
        optimizer, schedule = self.optimizer.state_dict(), self.schedule.state_dict()
        trained = self.model.state_dict() if self.average is not None else None
        save(TrainingCheckpoint(weights, optimizer, schedule, self.state, rng, trained), self.run_dir.last)
        if is_best:
            save(weights, self.run_dir.best)
        keep = self.config.train.keep_checkpoints
        if keep:
            save(weights, self.run_dir.step_checkpoint(self.state.step))
            for old in self.run_dir.step_checkpoints()[:-keep]:
                old.unlink(missing_ok=True)  # pruned only once the newer one is safely written

    def _finish(self, stop_reason: str | None) -> dict:
        """The summary (summary.json, and a log line); how to resume when interrupted."""
        state = self.state
        epoch_batches = max(1, len(self.data.sampler.rank_batches(state.epoch)))
        summary = {
            "stop_reason": stop_reason,
            "steps": state.step,
            "epochs": round(state.epoch + state.batch_in_epoch / epoch_batches, 2),
            "minutes": round(state.elapsed / 60, 2),
            "best_dev_bleu": state.best_bleu if self.validator.dev is not None else None,
            "best_step": state.best_step,
            "skipped_updates": state.skipped_updates,
            "best_checkpoint": str(self.run_dir.best),
            "last_checkpoint": str(self.run_dir.last),
            "curves": str(self.run_dir.curves),
            "interrupted": stop_reason == "interrupted",
            "processes": self.group.world_size,
            "init_from": self.run_info.get("init_from"),
            "train_corpora": self.data.corpora,
        }
        if self.board is not None:
            self.board.close()
        if self.group.is_main:
            self.run_dir.write_summary(summary)
            _report_finished(summary, self.run_dir)
        return summary


def _report_finished(summary: dict, run_dir: RunDir) -> None:
    """The closing log line, and how to resume an interrupted run."""
    best = summary["best_dev_bleu"]
    log.info(
        "Finished (%s): %s; %d steps, %.2f epochs, %.1f minutes of training. "
        "Best checkpoint: %s; resume point: %s; curves: %s; metrics: %s.",
        summary["stop_reason"],
        "no dev set" if best is None else f"best dev BLEU {best:.2f} at step {summary['best_step']}",
        summary["steps"],
        summary["epochs"],
        summary["minutes"],
        run_dir.best,
        run_dir.last,
        run_dir.curves,
        run_dir.metrics,
    )
    if summary["interrupted"]:
        log.warning("To continue this run: seq2seq train %s --resume", run_dir.config)


def _groups_of(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive groups of `size` batches (the last group of an epoch may be smaller)."""
    iterator = iter(batches)
    while group := list(itertools.islice(iterator, size)):
        yield group


def train(config: Config, resume: bool = False, force: bool = False, argv: list[str] | None = None) -> dict:
    """Run one training experiment from `config`; returns the summary dict."""
    with prepared_run(config, resume, force, argv) as trainer:
        return trainer.run()


@contextlib.contextmanager
def prepared_run(
    config: Config, resume: bool = False, force: bool = False, argv: list[str] | None = None
) -> Iterator[Trainer]:
    """A Trainer with every part of the run built; afterwards the run's log is detached and the process group left."""
    group, device = builders.create_process_group(config)
    run_dir = RunDir(config.train.run_dir)
    log_handler = None
    try:
        check_precision(device, config.train.precision, "train.precision")  # before any work
        with run_dir.locked() if group.is_main else contextlib.nullcontext():  # one writer per run directory
            restarted = not resume and _restarted_by_torchrun(run_dir, group)
            resume = resume or restarted
            run_dir.check_can_start(resume, force)
            if config.train.tensorboard:
                summary_writer_class()  # a missing package is reported before the run directory is touched
            resumed = _read_resume_point(run_dir, config, force) if resume else None
            if group.is_main:
                run_dir.prepare(config, resume)
                log_handler = run_dir.attach_log()
                if restarted:
                    log.warning("torchrun restarted the training processes: resuming from %s", run_dir.last)
            trainer = _build_trainer(config, group, device, run_dir, resumed, argv if argv is not None else sys.argv)
            del resumed  # restored into the model and optimizer: not kept for the whole run
            yield trainer
    finally:
        detach_log(log_handler)  # a failed set-up leaves no log handler behind
        shutdown(group)


def _restarted_by_torchrun(run_dir: RunDir, group: ProcessGroup) -> bool:
    """True when torchrun restarted the workers (`--max-restarts`) and the run has a resume point.

    The restarted group runs the same command line, without --resume: it continues from last.pt by
    itself, which gives the weights of an uninterrupted run. Every process agrees: the attempt is
    counted in torchrun's store (seq2seq.distributed), or else by torchrun's restart count.
    """
    restarts = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    restarted = group.attempt > 0 or (restarts.isdigit() and int(restarts) > 0)
    return restarted and run_dir.last.is_file()


def _read_resume_point(run_dir: RunDir, config: Config, force: bool) -> TrainingCheckpoint:
    """last.pt, read once: checked against the config here, restored by the builders."""
    payload = load_checkpoint(run_dir.last)
    run_dir.check_same_run(stored_config(payload), config, force)
    return TrainingCheckpoint.from_payload(payload, run_dir.last)


def _build_trainer(
    config: Config,
    group: ProcessGroup,
    device: torch.device,
    run_dir: RunDir,
    resumed: TrainingCheckpoint | None,
    argv: list[str],
) -> Trainer:
    """Build every part of the run, in the order that fixes the random streams, and hand them to a Trainer."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if device.type == "cpu":
        keep_freed_memory()  # large tensors reused from step to step, not mapped afresh (seq2seq/allocator.py)
    builders.set_seed(config.train.seed)
    initial = builders.read_initial_weights(config) if resumed is None and config.train.init_from else None
    origin = resumed.weights if resumed is not None else initial
    data = builders.create_training_data(config, group, run_dir, origin.tokenizer if origin else None)
    validator = builders.create_validator(config, data.tokenizer, device, group)
    model = builders.create_model(config, data.tokenizer, device)
    run_info = run_record(argv, data.digests) | {"processes": group.world_size}
    if initial is not None:
        run_info["init_from"] = builders.initialise_from(model, initial, config)
    elif resumed is not None and "init_from" in resumed.weights.run:
        run_info["init_from"] = resumed.weights.run["init_from"]
    if len(data.corpora) > 1:
        run_info["train_corpora"] = data.corpora
    average = builders.create_weight_average(config, model)
    train_model = builders.wrap_for_processes(model, group, device, config.train.seed)
    optimizer, schedule = builders.create_optimizer(config, model), builders.create_schedule(config)
    state = TrainingState(world_size=group.world_size)
    if resumed is not None:
        state = builders.restore_training(resumed, model, average, optimizer, schedule, group, device, run_dir)
        _report_resumed(run_dir, state, validator)
    _report_model(config, model, device, group)
    board = builders.create_tensorboard(config, run_dir, group, state.step)
    scaler = builders.create_scaler(config, device)
    return Trainer(
        config,
        group,
        device,
        model,
        train_model,
        average,
        optimizer,
        schedule,
        scaler,
        data,
        validator,
        board,
        run_dir,
        state,
        run_info,
    )


def _report_resumed(run_dir: RunDir, state: TrainingState, validator: Validator) -> None:
    best = f", best dev BLEU {state.best_bleu:.2f} at step {state.best_step}" if validator.dev else ""
    log.info(
        "Resumed %s at step %d (epoch %d, batch %d of it)%s",
        run_dir,
        state.step,
        state.epoch + 1,
        state.batch_in_epoch,
        best,
    )


def _report_model(config: Config, model: Seq2Seq, device: torch.device, group: ProcessGroup) -> None:
    log.info(
        "Model: %s parameters; attention %s; input feeding %s; device %s, %s%s",
        f"{count_parameters(model):,}",
        config.model.attention.type,
        config.model.input_feeding,
        device,
        config.train.precision,
        f"; {group.world_size} processes" if group.active else "",
    )
