"""The training loop: data, model, optimisation, validation, checkpoints, resume.

`train(config)` runs a whole experiment and returns its summary. Everything a run writes lives in
its run directory: train.log, config.yaml, the SentencePiece model(s), metrics.jsonl (one line
per validation), progress.jsonl (one line per log interval), curves.png, and checkpoints
(last.pt for resuming, best.pt, and the latest step checkpoints).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from seq2seq import checkpoint as ckpt
from seq2seq.config import Config, config_to_dict, parse_duration, save_config
from seq2seq.data import (
    Batch,
    EncodedCorpus,
    ParallelDataset,
    TokenBucketSampler,
    check_aligned,
    collate,
    corpus_file,
    file_digest,
    load_training_corpus,
    read_parallel,
)
from seq2seq.distributed import (
    any_process,
    barrier,
    broadcast_from_main,
    gather_objects,
    init_distributed,
    max_over_processes,
    shutdown,
    sum_over_processes,
)
from seq2seq.errors import UserError
from seq2seq.metrics import bleu
from seq2seq.model import Seq2Seq, count_parameters
from seq2seq.plots import plot_training_curves, read_jsonl
from seq2seq.runinfo import run_record
from seq2seq.schedule import LearningRateSchedule
from seq2seq.search import decode_lines
from seq2seq.textfiles import count_lines
from seq2seq.tokenizer import PAD_ID, Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

MAX_BAD_STEPS_IN_A_ROW = 10


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is a user error naming `setting`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting} is 'cuda' but no CUDA GPU is visible: use 'auto' or 'cpu'")
    return torch.device(name)


def preparation_workers(configured: int, paths: tuple[Path, Path]) -> int:
    """Processes that encode the corpus: as configured, or (0) one per core for corpora over 20 MB."""
    if configured:
        return configured
    large = sum(p.stat().st_size for p in paths) > 20_000_000
    return max(1, os.cpu_count() or 1) if large else 1


def set_seed(seed: int) -> None:
    """Seed every random number generator training uses."""
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: Config, tokenizer: Tokenizer) -> Seq2Seq:
    """The model described by `config.model` for this tokenizer's vocabularies."""
    return Seq2Seq(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)


def build_optimizer(config: Config, model: Seq2Seq) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters."""
    train = config.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=train.lr, betas=train.adam_betas, weight_decay=train.weight_decay)


def sequence_loss(model: torch.nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy per target token under teacher forcing (padding skipped).

    `model` is a Seq2Seq or its DistributedDataParallel wrapper.
    """
    tgt_mask = batch.tgt_out != PAD_ID  # [B, T]
    logits, _ = model(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, tgt_mask)  # [N, V]
    return F.cross_entropy(logits.float(), batch.tgt_out[tgt_mask], label_smoothing=label_smoothing)


@dataclass
class TrainingState:
    """Counters that a checkpoint carries so that a resumed run continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    elapsed: float = 0.0  # training seconds before this process
    best_bleu: float = -1.0
    best_step: int = 0
    validations_without_improvement: int = 0
    bad_steps: int = 0  # updates skipped for a non-finite loss or gradient
    consecutive_bad: int = 0
    world_size: int = 1  # processes the run trains with (torchrun)
    history: list[dict] = field(default_factory=list)  # validation records


@dataclass
class DevSet:
    """Dev sources and references as raw lines, and the non-empty pairs as batches for the dev loss."""

    src: list[str]
    ref: list[str]
    batches: list[Batch]


def make_dev_set(src: list[str], ref: list[str], tokenizer: Tokenizer, batch_tokens: int) -> DevSet:
    """Dev lines plus teacher-forcing batches of their non-empty pairs."""
    pairs = [(s, t) for s, t in zip(src, ref) if s.strip() and t.strip()]
    corpus = EncodedCorpus.from_lists(
        tokenizer.encode_src([s for s, _ in pairs]), tokenizer.encode_tgt([t for _, t in pairs])
    )
    dataset = ParallelDataset(corpus)
    longest = 1 + int(max(corpus.src_lengths.max(initial=0), corpus.tgt_lengths.max(initial=0)))
    sampler = TokenBucketSampler(corpus.src_lengths, corpus.tgt_lengths, max(batch_tokens, longest), shuffle=False)
    return DevSet(src, ref, [collate([dataset[i] for i in indices]) for indices in sampler])


class StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a polite stop after the current step; the second is immediate."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Stop requested: finishing this step and saving a checkpoint (press Ctrl-C again to quit now)")


class Trainer:
    """One training run: owns the model, optimizer, schedule, data and run directory."""

    def __init__(self, config: Config, resume: bool = False, force: bool = False, argv: list[str] | None = None):
        self.config = config
        self.run_dir = Path(config.train.run_dir)
        self.argv = argv if argv is not None else sys.argv
        self.group, self.device = init_distributed(resolve_device(config.train.device, "train.device"))
        if not self.group.is_main:  # one voice: the other processes only warn
            logging.getLogger("seq2seq").setLevel(logging.WARNING)
        self._log_handler = None
        self._prepare_run_dir(resume, force)
        try:
            self._setup(resume)
        except BaseException:
            self.close()  # a failed set-up leaves no log handler behind
            raise

    def _setup(self, resume: bool) -> None:
        config = self.config
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        set_seed(config.train.seed)
        self.state = TrainingState(world_size=self.group.world_size)
        resume_payload = ckpt.load_checkpoint(self.run_dir / "last.pt") if resume else None
        self._load_data(resume_payload)
        self.model = build_model(config, self.tokenizer).to(self.device)
        self.train_model = self.model  # what training calls: the model, or its DDP wrapper
        if self.group.active:
            torch.manual_seed(config.train.seed + self.group.rank)  # same weights, different dropout per process
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.train.precision == "fp16")
        self.optimizer = build_optimizer(config, self.model)
        self.schedule = LearningRateSchedule(config.train.schedule, config.train.lr, config.train.max_steps)
        self.max_seconds = parse_duration(config.train.max_time) if config.train.max_time else None
        if resume_payload is not None:
            self._restore(resume_payload)
        log.info(
            "Model: %s parameters; attention %s; input feeding %s; device %s, %s%s",
            f"{count_parameters(self.model):,}",
            config.model.attention.type,
            config.model.input_feeding,
            self.device,
            config.train.precision,
            f"; {self.group.world_size} processes" if self.group.active else "",
        )

    # --- set-up ------------------------------------------------------------------------------

    def _prepare_run_dir(self, resume: bool, force: bool) -> None:
        saved_config = self.run_dir / "config.yaml"
        last = self.run_dir / "last.pt"
        if resume:
            if not last.is_file():
                raise UserError(f"nothing to resume: {last} does not exist (train without --resume to start the run)")
            payload = ckpt.load_checkpoint(last)
            stored = payload.get("config")
            if not force and (
                not isinstance(stored, dict)
                or _without_run_limits(stored) != _without_run_limits(config_to_dict(self.config))
            ):
                raise UserError(
                    f"{self.run_dir} holds a run of a different config: resume with the same config "
                    "(only train.max_steps/max_epochs/max_time may change) or add --force"
                )
            missing = [
                k for k in ("model", "optimizer", "schedule", "training_state", "rng", "tokenizer") if k not in payload
            ]
            if missing:
                raise UserError(
                    f"{last} holds no training state ({', '.join(missing)} missing): it cannot be resumed from; "
                    "start a new run, or restore the last.pt the run wrote"
                )
        elif last.is_file() and not force:
            raise UserError(
                f"{self.run_dir} already holds a run: add --resume to continue it, choose another "
                "train.run_dir, or add --force to start over there"
            )
        if not self.group.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for stale in ("metrics.jsonl", "progress.jsonl"):
                (self.run_dir / stale).unlink(missing_ok=True)
        save_config(self.config, saved_config)
        self._log_handler = _attach_run_log(self.run_dir / "train.log")

    def _load_data(self, resume_payload: dict | None) -> None:
        data, cache_dir = self.config.data, Path(self.config.data.cache_dir)
        paths = (corpus_file(data.train, data.src_lang), corpus_file(data.train, data.tgt_lang))
        self.data_digests = (file_digest(paths[0]), file_digest(paths[1]))
        line_counts = count_lines(paths[0]), count_lines(paths[1])
        check_aligned(paths[0], line_counts[0], paths[1], line_counts[1])
        log.info("Training corpus: %s and %s, %d pairs", paths[0], paths[1], line_counts[0])
        if not self.group.is_main:
            barrier(self.group)  # the main process fills the cache first; the others then read it
        if resume_payload is not None:
            self.tokenizer = Tokenizer.from_state_dict(resume_payload["tokenizer"])
        else:
            self.tokenizer = build_tokenizer(
                paths, self.data_digests, self.config.tokenizer, cache_dir, self.config.train.seed
            )
        corpus, stats = load_training_corpus(
            paths,
            self.data_digests,
            self.tokenizer,
            data.max_src_length,
            data.max_tgt_length,
            cache_dir,
            workers=preparation_workers(data.prepare_workers, paths),
        )
        if self.group.is_main:
            self.tokenizer.save(self.run_dir)
            barrier(self.group)
        log.info(
            "Kept %d of %d training pairs (skipped: %d empty, %d longer than %d/%d pieces)",
            stats["kept"],
            stats["pairs"],
            stats["skipped_empty"],
            stats["skipped_too_long"],
            data.max_src_length,
            data.max_tgt_length,
        )
        if stats["kept"] == 0:
            raise UserError(
                f"no training pairs left after filtering {paths[0]} / {paths[1]}: "
                "check the files or raise data.max_src_length / data.max_tgt_length"
            )
        self.dataset = ParallelDataset(corpus)
        self.sampler = TokenBucketSampler(
            corpus.src_lengths,
            corpus.tgt_lengths,
            self.config.train.batch_tokens,
            seed=self.config.train.seed,
            num_replicas=self.group.world_size,
            rank=self.group.rank,
        )
        if not self.sampler.rank_batches(0):
            raise UserError(
                f"{self.group.world_size} processes but too few batches to share: use fewer processes or a larger corpus"
            )
        self.dev = None
        if data.dev and self.group.is_main:
            dev_src, dev_ref, _ = read_parallel(data.dev, data.src_lang, data.tgt_lang)
            limit = self.config.train.validate_max_sentences
            self.dev = make_dev_set(dev_src[:limit], dev_ref[:limit], self.tokenizer, self.config.train.batch_tokens)
            log.info("Dev set: %s, %d pairs", data.dev, len(self.dev.src))

    def _restore(self, payload: dict) -> None:
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise UserError(
                f"{self.run_dir / 'last.pt'} holds a different model or optimizer ({reason[:120]}): "
                "start this config in a new run directory instead of resuming"
            ) from None
        self.schedule.load_state_dict(payload["schedule"])
        self.state = TrainingState(**payload["training_state"])
        if self.state.world_size != self.group.world_size:
            raise UserError(
                f"{self.run_dir} was trained with {self.state.world_size} process(es), not {self.group.world_size}: "
                "resume with the same number (the position in the data depends on it)"
            )
        rng = payload["rng"]
        random.setstate(_python_rng_state(rng["python"]))
        torch.set_rng_state(rng["torch"][self.group.rank])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][self.group.rank], self.device)
        best = f", best dev BLEU {self.state.best_bleu:.2f} at step {self.state.best_step}" if self.dev else ""
        log.info(
            "Resumed %s at step %d (epoch %d, batch %d of it)%s",
            self.run_dir,
            self.state.step,
            self.state.epoch + 1,
            self.state.batch_in_epoch,
            best,
        )
        if self.group.is_main:  # records written after this checkpoint belong to the lost part of the run
            for name in ("metrics.jsonl", "progress.jsonl"):
                _truncate_records(self.run_dir / name, self.state.step)

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> dict:
        """Train until a limit or early stopping; returns the summary."""
        train = self.config.train
        start = time.monotonic() - self.state.elapsed
        bar = tqdm(
            total=train.max_steps,
            initial=self.state.step,
            unit="step",
            dynamic_ncols=True,
            disable=None if self.group.is_main else True,
        )
        interval_loss, interval_tokens, interval_start = 0.0, 0, time.monotonic()
        stop_reason = self._limit_reached(False)  # a resumed run may already be at its limit
        with StopRequest() as stop:
            while stop_reason is None:
                if train.max_epochs is not None and self.state.epoch >= train.max_epochs:
                    stop_reason = f"reached train.max_epochs ({train.max_epochs})"
                    break
                self.sampler.set_epoch(self.state.epoch, self.state.batch_in_epoch)
                loader = DataLoader(
                    self.dataset,
                    batch_sampler=self.sampler,
                    collate_fn=collate,
                    num_workers=self.config.data.num_workers,
                    generator=torch.Generator(),  # its own: drawing from the global RNG would change dropout on resume
                )
                for batches in _groups_of(loader, train.accumulate_batches):
                    loss = self._train_step([batch.to(self.device) for batch in batches])
                    self.state.batch_in_epoch += len(batches)
                    if loss is not None:
                        tokens = sum(batch.num_tgt_tokens for batch in batches)
                        interval_loss += loss * tokens
                        interval_tokens += tokens
                    self.state.elapsed = time.monotonic() - start
                    bar.update(1)
                    if self.state.step % train.log_every == 0 and interval_tokens:
                        seconds = time.monotonic() - interval_start
                        self._log_progress(bar, interval_loss, interval_tokens, seconds)
                        interval_loss, interval_tokens, interval_start = 0.0, 0, time.monotonic()
                    stop_reason, interrupted = self._agreed_stop(stop.requested)
                    if interrupted:  # save at once; validating could take minutes
                        self._save_point(validate=False)
                    elif self.state.step % train.validate_every == 0 or stop_reason:
                        early = self._save_point(validate=True)
                        stop_reason = stop_reason or early
                        interval_start = time.monotonic()  # validation time is not training speed
                    if stop_reason:
                        break
                else:
                    self.state.epoch += 1
                    self.state.batch_in_epoch = 0
                    if train.max_epochs is not None and self.state.epoch >= train.max_epochs:
                        stop_reason = f"reached train.max_epochs ({train.max_epochs})"
                        if self.state.step % train.validate_every:  # not validated at this step yet
                            self._save_point(validate=True)
        bar.close()
        barrier(self.group)  # leave together: a process tearing gloo down under another can abort it
        return self._finish(stop_reason, interrupted=stop_reason == "interrupted")

    def _autocast(self) -> torch.autocast:
        """Autocast to train.precision (disabled for fp32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _train_step(self, batches: list[Batch]) -> float | None:
        """One update from the gradients of `batches` (averaged); returns the mean loss, or None if skipped."""
        self.model.train()
        self.state.step += 1
        lr = self.schedule.lr(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            # With DDP, gradients are averaged across processes once, after the last batch.
            synchronise = contextlib.nullcontext() if last or not self.group.active else self.train_model.no_sync()
            with synchronise:
                with self._autocast():
                    loss = sequence_loss(self.train_model, batch, self.config.train.label_smoothing) / len(batches)
                self.scaler.scale(loss).backward()  # the scaler only scales with fp16
            loss_value += loss.item()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.train.clip_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else math.inf)
        if not (math.isfinite(loss_value) and math.isfinite(float(grad_norm))):
            self.scaler.update()  # fp16: a smaller scale next time
            self.state.bad_steps += 1
            self.state.consecutive_bad += 1
            log.warning(
                "Step %d: non-finite loss or gradient, update skipped (%d so far)",
                self.state.step,
                self.state.bad_steps,
            )
            if self.state.consecutive_bad >= MAX_BAD_STEPS_IN_A_ROW:
                raise UserError(
                    f"{MAX_BAD_STEPS_IN_A_ROW} updates in a row had a non-finite loss or gradient: the run diverged; "
                    f"lower train.lr or set train.clip_grad_norm (last good checkpoint: {self.run_dir / 'last.pt'})"
                )
            return None
        self.state.consecutive_bad = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_value

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
                with self._autocast():
                    early = self._validate_and_save(rng)
            else:
                self._save_checkpoints(False, rng)
        barrier(self.group)
        if self.group.active:  # the plateau schedule changed on the main process only
            self.schedule.load_state_dict(broadcast_from_main(self.group, self.schedule.state_dict()))
        if any_process(self.group, early is not None):
            return early or "early stopping (decided by the main process)"
        return None

    def _limit_reached(self, stop_requested: bool) -> str | None:
        train = self.config.train
        if stop_requested:
            return "interrupted"
        if train.max_steps is not None and self.state.step >= train.max_steps:
            return f"reached train.max_steps ({train.max_steps})"
        if self.max_seconds is not None and self.state.elapsed >= self.max_seconds:
            return f"reached train.max_time ({train.max_time})"
        return None

    def _log_progress(self, bar: tqdm, loss_sum: float, tokens: int, seconds: float) -> None:
        """Record loss and speed over the last interval (summed over all processes)."""
        loss_sum, tokens = sum_over_processes(self.group, [loss_sum, float(tokens)])
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
            "lr": lr,
        }
        _append_jsonl(self.run_dir / "progress.jsonl", record)
        log.debug("step %d loss %.4f tok/s %.0f lr %.2e", self.state.step, loss, tokens_per_second, lr)

    # --- validation and checkpoints ----------------------------------------------------------

    def validate(self) -> dict:
        """Dev loss, perplexity and greedy BLEU (detokenized, sacreBLEU)."""
        self.model.eval()
        record: dict[str, Any] = {"step": self.state.step, "epoch": self.state.epoch + 1}
        if self.dev is None:
            return record
        record["dev_loss"] = self._dev_loss()
        record["dev_ppl"] = math.exp(min(record["dev_loss"], 50.0))
        started = time.monotonic()
        hypotheses = decode_lines(
            self.model,
            self.tokenizer,
            self.dev.src,
            self.device,
            batch_tokens=self.config.train.batch_tokens,
            max_output_ratio=self.config.train.max_output_ratio,
        )
        texts = [self.tokenizer.decode_tgt(best[0].ids) for best in hypotheses]
        score = bleu(texts, self.dev.ref)
        record.update(dev_bleu=round(score.value, 2), decode_seconds=round(time.monotonic() - started, 1))
        return record

    @torch.no_grad()
    def _dev_loss(self) -> float:
        """Mean cross-entropy per target token on the dev pairs (no label smoothing)."""
        total, tokens = 0.0, 0
        for batch in self.dev.batches:
            batch = batch.to(self.device)
            count = batch.num_tgt_tokens
            total += sequence_loss(self.model, batch).item() * count
            tokens += count
        return total / max(tokens, 1)

    def _validate_and_save(self, rng: dict) -> str | None:
        """Validate, write metrics, plots and checkpoints; returns a reason to stop early, if any."""
        record = self.validate()
        record["minutes"] = round(self.state.elapsed / 60, 3)
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        improved = False
        if "dev_bleu" in record:
            improved = record["dev_bleu"] > self.state.best_bleu
            if improved:
                self.state.best_bleu, self.state.best_step = record["dev_bleu"], self.state.step
                self.state.validations_without_improvement = 0
            else:
                self.state.validations_without_improvement += 1
            if self.schedule.on_validation(record["dev_bleu"]):
                log.info("Dev BLEU stopped improving: learning rate scale now %.3g", self.schedule.plateau_scale)
            log.info(
                "Validation at step %d (epoch %d, %.1f min): dev loss %.3f, ppl %.1f, BLEU %.2f%s",
                self.state.step,
                self.state.epoch + 1,
                record["minutes"],
                record["dev_loss"],
                record["dev_ppl"],
                record["dev_bleu"],
                " (new best)" if improved else f" (best {self.state.best_bleu:.2f} at step {self.state.best_step})",
            )
        self.state.history.append(record)
        _append_jsonl(self.run_dir / "metrics.jsonl", record)
        self._save_checkpoints(improved or self.dev is None, rng)
        plot_training_curves(self.run_dir)
        patience = self.config.train.early_stopping_patience
        if patience is not None and self.state.validations_without_improvement >= patience:
            return f"early stopping: dev BLEU did not improve for {patience} validations"
        return None

    def weights_payload(self) -> dict:
        """What translation needs: config, tokenizer, weights, and the run record."""
        return {
            "config": config_to_dict(self.config),
            "tokenizer": self.tokenizer.state_dict(),
            "model": self.model.state_dict(),
            "step": self.state.step,
            "best_bleu": self.state.best_bleu,
            "run": run_record(self.argv, self.data_digests) | {"processes": self.group.world_size},
        }

    def _save_checkpoints(self, is_best: bool, rng: dict) -> None:
        if self.state.consecutive_bad:
            log.warning("Not saving at step %d: the last update was skipped as non-finite", self.state.step)
            return
        weights = self.weights_payload()
        resume = {
            **weights,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "training_state": {k: v for k, v in vars(self.state).items() if k in TrainingState.__dataclass_fields__},
            "rng": rng,
        }
        ckpt.save_checkpoint(resume, self.run_dir / "last.pt")
        if is_best:
            ckpt.save_checkpoint(weights, self.run_dir / "best.pt")
        if self.config.train.keep_checkpoints:
            ckpt.save_checkpoint(weights, self.run_dir / f"step-{self.state.step:07d}.pt")
            step_files = sorted(self.run_dir.glob("step-*.pt"))
            for old in step_files[: -self.config.train.keep_checkpoints]:
                old.unlink(missing_ok=True)  # pruned only once the newer one is safely written

    def _finish(self, stop_reason: str | None, interrupted: bool) -> dict:
        state = self.state
        summary = {
            "stop_reason": stop_reason,
            "steps": state.step,
            "epochs": round(
                state.epoch + state.batch_in_epoch / max(1, len(self.sampler.rank_batches(state.epoch))), 2
            ),
            "minutes": round(state.elapsed / 60, 2),
            "best_dev_bleu": state.best_bleu if self.dev is not None else None,
            "best_step": state.best_step,
            "skipped_updates": state.bad_steps,
            "best_checkpoint": str(self.run_dir / "best.pt"),
            "last_checkpoint": str(self.run_dir / "last.pt"),
            "curves": str(self.run_dir / "curves.png"),
            "interrupted": interrupted,
            "processes": self.group.world_size,
        }
        if not self.group.is_main:
            return summary
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        bleu_text = (
            f"best dev BLEU {state.best_bleu:.2f} at step {state.best_step}" if self.dev is not None else "no dev set"
        )
        log.info(
            "Finished (%s): %s; %d steps, %.2f epochs, %.1f minutes of training. "
            "Best checkpoint: %s; resume point: %s; curves: %s; metrics: %s.",
            stop_reason,
            bleu_text,
            state.step,
            summary["epochs"],
            state.elapsed / 60,
            summary["best_checkpoint"],
            summary["last_checkpoint"],
            summary["curves"],
            self.run_dir / "metrics.jsonl",
        )
        if interrupted:
            log.warning("To continue this run: seq2seq train %s --resume", self.run_dir / "config.yaml")
        return summary

    def close(self) -> None:
        """Detach the run's log file and leave the process group."""
        _detach_run_log(getattr(self, "_log_handler", None))
        shutdown(self.group)


def _groups_of(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive groups of `size` batches (the last group of an epoch may be smaller)."""
    iterator = iter(batches)
    while group := list(itertools.islice(iterator, size)):
        yield group


def _truncate_records(path: Path, last_step: int) -> None:
    """Keep only the JSON-lines records of steps up to `last_step` (and drop a line a crash cut short)."""
    if path.is_file():
        kept = [record for record in read_jsonl(path) if record.get("step", 0) <= last_step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def _attach_run_log(path: Path) -> logging.Handler:
    """Copy the package's INFO log into `path` (also when no CLI set logging up)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    package = logging.getLogger("seq2seq")
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    return handler


def _detach_run_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("seq2seq").removeHandler(handler)
        handler.close()


def _without_run_limits(config: dict) -> dict:
    """A config dict without the keys that may change between a run and its resumption."""
    train = {k: v for k, v in config["train"].items() if k not in ("max_steps", "max_epochs", "max_time")}
    return {**config, "train": train}


def _python_rng_state(state: Any) -> tuple:
    version, internal, gauss = state  # lists after a checkpoint round trip; random wants tuples
    return (version, tuple(internal), gauss)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def train(config: Config, resume: bool = False, force: bool = False, argv: list[str] | None = None) -> dict:
    """Run one training experiment from `config`; returns the summary dict."""
    trainer = Trainer(config, resume=resume, force=force, argv=argv)
    try:
        return trainer.run()
    finally:
        trainer.close()
