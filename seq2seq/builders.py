"""Builders for a training run: process group and device, seed, data, model, optimizer, validator.

Each `create_*` function builds one part from the config; `seq2seq.train.train` calls them in
order and hands the parts to the `Trainer`, which only uses them.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.checkpoint import TrainingCheckpoint, TrainingState
from seq2seq.config import Config, DecodeConfig
from seq2seq.data import (
    ParallelDataset,
    TokenBucketSampler,
    check_aligned,
    corpus_file,
    file_digest,
    load_training_corpus,
)
from seq2seq.device import resolve_device
from seq2seq.distributed import ProcessGroup, barrier, init_distributed
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq
from seq2seq.rundir import RunDir
from seq2seq.schedule import LearningRateSchedule
from seq2seq.textfiles import count_lines
from seq2seq.tokenizer import Tokenizer, build_tokenizer
from seq2seq.validation import Validator, load_dev_set

log = logging.getLogger(__name__)


def create_process_group(config: Config) -> tuple[ProcessGroup, torch.device]:
    """Join torchrun's process group (if any) and pick this process's device; only the main one logs INFO."""
    group, device = init_distributed(resolve_device(config.train.device, "train.device"))
    if not group.is_main:  # one voice: the other processes only warn
        logging.getLogger("seq2seq").setLevel(logging.WARNING)
    return group, device


def set_seed(seed: int) -> None:
    """Seed every random number generator training uses."""
    random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainingData:
    """The encoded training corpus, its batches for this process, its tokenizer and the files' hashes."""

    tokenizer: Tokenizer
    dataset: ParallelDataset
    sampler: TokenBucketSampler
    digests: tuple[str, str]


def preparation_workers(configured: int, paths: tuple[Path, Path]) -> int:
    """Processes that encode the corpus: as configured, or (0) one per core for corpora over 20 MB."""
    if configured:
        return configured
    large = sum(p.stat().st_size for p in paths) > 20_000_000
    return max(1, os.cpu_count() or 1) if large else 1


def create_training_data(
    config: Config, group: ProcessGroup, run_dir: RunDir, resumed: TrainingCheckpoint | None
) -> TrainingData:
    """Check and encode the training corpus (the main process fills the cache, the others read it)."""
    data, cache_dir = config.data, Path(config.data.cache_dir)
    paths = (corpus_file(data.train, data.src_lang), corpus_file(data.train, data.tgt_lang))
    digests = (file_digest(paths[0]), file_digest(paths[1]))
    line_counts = count_lines(paths[0]), count_lines(paths[1])
    check_aligned(paths[0], line_counts[0], paths[1], line_counts[1])
    log.info("Training corpus: %s and %s, %d pairs", paths[0], paths[1], line_counts[0])
    if not group.is_main:
        barrier(group)  # the main process fills the cache first; the others then read it
    if resumed is not None:
        tokenizer = Tokenizer.from_state_dict(resumed.weights.tokenizer)
    else:
        tokenizer = build_tokenizer(paths, digests, config.tokenizer, cache_dir, config.train.seed)
    workers = preparation_workers(data.prepare_workers, paths)
    corpus, stats = load_training_corpus(
        paths, digests, tokenizer, data.max_src_length, data.max_tgt_length, cache_dir, workers=workers
    )
    if group.is_main:
        run_dir.save_tokenizer(tokenizer)
        barrier(group)
    _report_filtering(stats, paths, config)
    sampler = TokenBucketSampler(
        corpus.src_lengths,
        corpus.tgt_lengths,
        config.train.batch_tokens,
        seed=config.train.seed,
        num_replicas=group.world_size,
        rank=group.rank,
    )
    if not sampler.rank_batches(0):
        raise UserError(
            f"{group.world_size} processes but too few batches to share: use fewer processes or a larger corpus"
        )
    return TrainingData(tokenizer, ParallelDataset(corpus), sampler, digests)


def _report_filtering(stats: dict, paths: tuple[Path, Path], config: Config) -> None:
    data = config.data
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


def create_model(config: Config, tokenizer: Tokenizer, device: torch.device) -> Seq2Seq:
    """The model described by `config.model` for this tokenizer's vocabularies, on `device`."""
    return Seq2Seq(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size).to(device)


def wrap_for_processes(model: Seq2Seq, group: ProcessGroup, device: torch.device, seed: int) -> torch.nn.Module:
    """What training calls: the model itself, or with several processes its DistributedDataParallel wrapper."""
    if not group.active:
        return model
    torch.manual_seed(seed + group.rank)  # same weights, different dropout per process
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def create_optimizer(config: Config, model: Seq2Seq) -> torch.optim.Optimizer:
    """The configured optimizer; weight decay applies to weight matrices only, never to biases."""
    train = config.train
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": params, "weight_decay": decay}
        for params, decay in ((matrices, train.weight_decay), (others, 0.0))
        if params
    ]
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr)
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=train.lr, betas=train.adam_betas)


def create_schedule(config: Config) -> LearningRateSchedule:
    """The learning-rate schedule of `config.train`."""
    return LearningRateSchedule(config.train.schedule, config.train.lr, config.train.max_steps)


def create_validator(config: Config, tokenizer: Tokenizer, device: torch.device, group: ProcessGroup) -> Validator:
    """Greedy validation on the dev set (read by the main process only) with the config's decoding limits."""
    dev = load_dev_set(config, tokenizer) if group.is_main else None
    # Greedy, in training's batch size, whole sentences; "fp32" switches training's autocast off inside the
    # decoding (the dev loss still runs under it), as validation always did.
    greedy = DecodeConfig(
        beam=1,
        max_output_ratio=config.decode.max_output_ratio,
        batch_tokens=config.train.batch_tokens,
        max_src_length=None,
        precision="fp32",
    )
    return Validator(dev, tokenizer, device, greedy, config.train.early_stopping_patience)


def create_scaler(config: Config, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler: active for fp16 only, a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")


def restore_training(
    resumed: TrainingCheckpoint,
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    schedule: LearningRateSchedule,
    group: ProcessGroup,
    device: torch.device,
    run_dir: RunDir,
) -> TrainingState:
    """Load a resumable checkpoint's weights, optimizer, schedule and random states; returns its counters."""
    try:
        model.load_state_dict(resumed.weights.model)
        optimizer.load_state_dict(resumed.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(
            f"{run_dir.last} holds a different model or optimizer ({reason[:120]}): "
            "start this config in a new run directory instead of resuming"
        ) from None
    schedule.load_state_dict(resumed.schedule)
    state = resumed.state
    if state.world_size != group.world_size:
        raise UserError(
            f"{run_dir} was trained with {state.world_size} process(es), not {group.world_size}: "
            "resume with the same number (the position in the data depends on it)"
        )
    version, internal, gauss = resumed.rng["python"]  # lists after a checkpoint round trip; random wants tuples
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(resumed.rng["torch"][group.rank])
    if "cuda" in resumed.rng and device.type == "cuda":
        torch.cuda.set_rng_state(resumed.rng["cuda"][group.rank], device)
    if group.is_main:  # records written after this checkpoint belong to the lost part of the run
        run_dir.truncate_records(state.step)
    return state
