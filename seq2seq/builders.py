"""Builders for a training run: process group and device, seed, data, model, optimizer, validator.

Each `create_*` function builds one part from the config; `seq2seq.train.train` calls them in
order and hands the parts to the `Trainer`, which only uses them.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq.board import TensorBoardLog
from seq2seq.checkpoint import TrainingCheckpoint, TrainingState, WeightsCheckpoint, read_weights
from seq2seq.config import (
    SAMPLING_MODEL_TYPES,
    Config,
    DecodeConfig,
    config_from_dict,
    config_to_dict,
    train_corpora,
)
from seq2seq.data import (
    CorpusSet,
    ParallelDataset,
    TokenBucketSampler,
    check_aligned,
    corpus_file,
    file_digest,
    load_training_corpus,
    weighted_epoch,
)
from seq2seq.device import resolve_device
from seq2seq.distributed import ProcessGroup, barrier, init_distributed
from seq2seq.ema import WeightAverage
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq
from seq2seq.rundir import RunDir
from seq2seq.schedule import LearningRateSchedule
from seq2seq.subwords import ESTIMATE_PAIRS, SubwordSampler, expected_lengths
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
class CorpusFiles:
    """One training corpus's two files, their hashes, and its weight in an epoch."""

    prefix: str
    paths: tuple[Path, Path]
    digests: tuple[str, str]
    weight: float


@dataclass
class TrainingData:
    """The encoded training corpora, their batches for this process, the tokenizer and what each corpus gave."""

    tokenizer: Tokenizer
    dataset: ParallelDataset
    sampler: TokenBucketSampler
    digests: list[str]  # source and target file hashes of each corpus, in order
    corpora: list[dict]  # per corpus: prefix, weight, pairs, kept, pairs drawn per epoch
    loader_workers: int  # DataLoader worker processes


def preparation_workers(configured: int, paths: tuple[Path, Path]) -> int:
    """Processes that encode the corpus: as configured, or (0) one per core for corpora over 20 MB."""
    if configured:
        return configured
    large = sum(p.stat().st_size for p in paths) > 20_000_000
    return max(1, os.cpu_count() or 1) if large else 1


def find_training_corpora(config: Config) -> list[CorpusFiles]:
    """Each training corpus's files, checked to exist and to have equal line counts, with their hashes."""
    data, found = config.data, []
    for corpus in train_corpora(data):
        paths = (corpus_file(corpus.prefix, data.src_lang), corpus_file(corpus.prefix, data.tgt_lang))
        line_counts = count_lines(paths[0]), count_lines(paths[1])
        check_aligned(paths[0], line_counts[0], paths[1], line_counts[1])
        log.info("Training corpus: %s and %s, %d pairs", paths[0], paths[1], line_counts[0])
        found.append(CorpusFiles(corpus.prefix, paths, (file_digest(paths[0]), file_digest(paths[1])), corpus.weight))
    return found


def create_training_data(
    config: Config,
    group: ProcessGroup,
    run_dir: RunDir,
    tokenizer_state: dict | None,
) -> TrainingData:
    """Check and encode the training corpora (the main process fills the cache, the others read it).

    `tokenizer_state` is the SentencePiece model(s) of a checkpoint being resumed or fine-tuned; without
    one, a model is trained on the corpora (or reused from the cache).
    """
    data, cache_dir = config.data, Path(config.data.cache_dir)
    corpora = find_training_corpora(config)
    if not group.is_main:
        barrier(group)  # the main process fills the cache first; the others then read it
    if tokenizer_state is not None:
        tokenizer = Tokenizer.from_state_dict(tokenizer_state)
    else:
        paths, digests = [c.paths for c in corpora], [c.digests for c in corpora]
        tokenizer = build_tokenizer(paths, digests, config.tokenizer, cache_dir, config.train.seed)
    encoded = []
    for corpus in corpora:
        workers = preparation_workers(data.prepare_workers, corpus.paths)
        limits = (data.max_src_length, data.max_tgt_length)
        pairs, stats = load_training_corpus(corpus.paths, corpus.digests, tokenizer, *limits, cache_dir, workers)
        _report_filtering(stats, corpus, config)
        encoded.append((pairs, stats))
    if group.is_main:
        run_dir.save_tokenizer(tokenizer)
        barrier(group)
    records = _describe_corpora(corpora, [stats for _, stats in encoded])  # before batching: names empty draws
    corpus_set = CorpusSet([pairs for pairs, _ in encoded])
    subwords = create_subword_sampler(config, tokenizer, corpus_set)
    sampler = create_batch_sampler(config, group, corpus_set, corpora, subwords)
    file_hashes = [digest for corpus in corpora for digest in corpus.digests]
    workers = data.num_workers or (1 if subwords is not None else 0)  # sampling: segment in the background
    return TrainingData(tokenizer, ParallelDataset(corpus_set, subwords), sampler, file_hashes, records, workers)


def create_subword_sampler(config: Config, tokenizer: Tokenizer, corpus_set: CorpusSet) -> SubwordSampler | None:
    """The subword sampler of tokenizer.sampling (None when off)."""
    sampling = config.tokenizer.sampling
    if sampling is None:
        return None
    limits = (config.data.max_src_length, config.data.max_tgt_length)
    subwords = SubwordSampler(tokenizer, sampling, config.train.seed, limits)
    log.info(
        "Subword sampling: alpha %g%s; every epoch segments the training pairs anew",
        sampling.alpha,
        f", n-best {sampling.nbest}" if tokenizer.model_type == "unigram" else " (BPE-dropout)",
    )
    return subwords


def create_batch_sampler(
    config: Config,
    group: ProcessGroup,
    corpus_set: CorpusSet,
    corpora: list[CorpusFiles],
    subwords: SubwordSampler | None,
) -> TokenBucketSampler:
    """Token-bucket batches of this process; sized for sampled segmentations when subword sampling is on."""
    data = config.data
    src_lengths, tgt_lengths = corpus_set.src_lengths, corpus_set.tgt_lengths
    if subwords is not None:  # sampled segmentations are longer: batch by their expected lengths
        every = max(1, len(corpus_set) // ESTIMATE_PAIRS)
        src_factor, tgt_factor = subwords.length_factors([corpus_set.pair(i) for i in range(0, len(corpus_set), every)])
        log.info("Sampled segmentations are %.2fx (source) and %.2fx (target) as long", src_factor, tgt_factor)
        src_lengths = expected_lengths(src_lengths, src_factor, data.max_src_length)
        tgt_lengths = expected_lengths(tgt_lengths, tgt_factor, data.max_tgt_length)
    sizes = [len(corpus) for corpus in corpus_set.corpora]
    weights = [corpus.weight for corpus in corpora]
    seed = config.train.seed
    plan = None if weights == [1.0] else functools.partial(weighted_epoch, sizes, weights, seed)
    sampler = TokenBucketSampler(
        src_lengths,
        tgt_lengths,
        config.train.batch_tokens,
        seed=seed,
        num_replicas=group.world_size,
        rank=group.rank,
        epoch_plan=plan,
    )
    if not sampler.rank_batches(0):
        raise UserError(
            f"{group.world_size} processes but too few batches to share: use fewer processes or a larger corpus"
        )
    return sampler


def _describe_corpora(corpora: list[CorpusFiles], stats: list[dict]) -> list[dict]:
    """What each corpus gives an epoch (logged when there are several, and kept for the summary)."""
    records = [
        {
            "prefix": corpus.prefix,
            "weight": corpus.weight,
            "pairs": corpus_stats["pairs"],
            "kept": corpus_stats["kept"],
            "per_epoch": _pairs_per_epoch(corpus.weight, corpus_stats["kept"]),
        }
        for corpus, corpus_stats in zip(corpora, stats)
    ]
    for record in records:
        if record["per_epoch"] == 0:
            raise UserError(
                f"data.train: corpus {record['prefix']} gives no pair to an epoch (weight {record['weight']:g} x "
                f"{record['kept']} pairs rounds to 0): raise its weight or remove it"
            )
    if len(records) > 1:
        drawn = ", ".join(f"{r['prefix']} {r['per_epoch']:,} (weight {r['weight']:g})" for r in records)
        log.info("Each epoch draws %s pairs: %s", f"{sum(r['per_epoch'] for r in records):,}", drawn)
    return records


def _pairs_per_epoch(weight: float, kept: int) -> int:
    """The pairs weighted_epoch draws from a corpus of `kept` pairs: floor(weight) copies plus the fraction's
    share, rounded by itself (round(1.5 x 5) is 8, but 5 + round(0.5 x 5) is 7)."""
    whole, fraction = divmod(weight, 1.0)
    return int(whole) * kept + round(fraction * kept)


def _report_filtering(stats: dict, corpus: CorpusFiles, config: Config) -> None:
    data, paths = config.data, corpus.paths
    log.info(
        "Kept %d of %d training pairs of %s (skipped: %d empty, %d longer than %d/%d pieces)",
        stats["kept"],
        stats["pairs"],
        corpus.prefix,
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


# --- fine-tuning: a new run that starts from a checkpoint's weights and tokenizer --------------------

MODEL_KEYS_FREE_TO_CHANGE = ("dropout",)  # fine-tuning may change these: no weight depends on them


def read_initial_weights(config: Config) -> WeightsCheckpoint:
    """The checkpoint named by train.init_from, checked to fit this config: same languages, same model section."""
    path = str(config.train.init_from)
    try:
        initial = read_weights(path)
    except UserError as exc:
        raise UserError(f"train.init_from: {exc}") from None
    try:
        stored = config_from_dict(initial.config)
    except UserError as exc:
        raise UserError(f"train.init_from: {path} holds a config this seq2seq cannot read ({exc})") from None
    for side in ("src_lang", "tgt_lang"):
        ours, theirs = getattr(config.data, side), getattr(stored.data, side)
        if ours != theirs:
            raise UserError(
                f"train.init_from: {path} translates {stored.data.src_lang}->{stored.data.tgt_lang}, this config "
                f"{config.data.src_lang}->{config.data.tgt_lang}: fine-tuning keeps the languages (data.{side})"
            )
    difference = first_difference(config_to_dict(config.model), config_to_dict(stored.model), "model")
    if difference is not None:
        key, ours, theirs = difference
        raise UserError(
            f"train.init_from: {key} is {theirs!r} in {path} but {ours!r} in this config: fine-tuning keeps the "
            f"model; copy the checkpoint's model section (`seq2seq info {path}` shows it)"
        )
    if config.tokenizer.sampling is not None:
        _check_can_sample(Tokenizer.from_state_dict(initial.tokenizer), path)
    _warn_unused_tokenizer_settings(config, stored, path)
    return initial


def _warn_unused_tokenizer_settings(config: Config, stored: Config, path: str) -> None:
    """A warning when the tokenizer section asks for another SentencePiece model than the checkpoint's (which is
    the one used: fine-tuning keeps the vocabulary)."""
    ours, theirs = config_to_dict(config.tokenizer), config_to_dict(stored.tokenizer)
    ours.pop("sampling", None)
    theirs.pop("sampling", None)
    difference = first_difference(ours, theirs, "tokenizer")
    if difference is not None:
        key, value, used = difference
        log.warning(
            "%s is %r in this config but %r in %s: fine-tuning uses the checkpoint's SentencePiece model(s), so the "
            "tokenizer section (other than sampling) is not used",
            key,
            value,
            used,
            path,
        )


def _check_can_sample(tokenizer: Tokenizer, path: str) -> None:
    """tokenizer.sampling segments with the checkpoint's SentencePiece model(s), not the tokenizer section's:
    they must be unigram or BPE models (word and char models have one segmentation only)."""
    if tokenizer.model_type not in SAMPLING_MODEL_TYPES:
        raise UserError(
            f"train.init_from: the SentencePiece model of {path} is a {tokenizer.model_type} model, which has one "
            "segmentation only: tokenizer.sampling needs a unigram or bpe model; remove tokenizer.sampling"
        )


def first_difference(ours: Any, theirs: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first dotted key (in the config's order) whose value differs, with both values; None if equal."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in list(ours) + [k for k in theirs if k not in ours]:
            if key in MODEL_KEYS_FREE_TO_CHANGE:
                continue
            found = first_difference(ours.get(key), theirs.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    return None if ours == theirs else (path, ours, theirs)


def initialise_from(model: Seq2Seq, initial: WeightsCheckpoint, config: Config) -> dict:
    """Load the fine-tuning checkpoint's weights into `model`; returns what the run's record says about it."""
    path = str(config.train.init_from)
    try:
        model.load_state_dict(initial.model)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise UserError(f"train.init_from: {path} holds weights of another shape ({reason[:120]})") from None
    record = {
        "path": path,
        "sha256": file_digest(Path(path)),
        "step": initial.step,
        "best_bleu": initial.best_bleu,
        "name": initial.config.get("name"),
    }
    log.info(
        "Fine-tuning from %s (step %s): its weights and SentencePiece model(s); a new optimizer and schedule",
        path,
        initial.step,
    )
    return record


def create_weight_average(config: Config, model: Seq2Seq) -> WeightAverage | None:
    """The moving average of the weights that train.ema_decay asks for (None when off)."""
    if config.train.ema_decay is None:
        return None
    log.info(
        "Keeping a moving average of the weights (decay %g): validation and checkpoints use it", config.train.ema_decay
    )
    return WeightAverage(model, config.train.ema_decay)


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


TENSORBOARD_EXAMPLES = 3  # dev sentences whose attention TensorBoard shows at each validation


def create_tensorboard(config: Config, run_dir: RunDir, group: ProcessGroup, step: int) -> TensorBoardLog | None:
    """TensorBoard event files in the run directory (train.tensorboard), written by the main process."""
    if not config.train.tensorboard or not group.is_main:
        return None
    return TensorBoardLog(run_dir.tensorboard, step)


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
    examples = TENSORBOARD_EXAMPLES if config.train.tensorboard else 0
    return Validator(dev, tokenizer, device, greedy, config.train.early_stopping_patience, examples)


def create_scaler(config: Config, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler: active for fp16 only, a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=config.train.precision == "fp16")


def restore_training(
    resumed: TrainingCheckpoint,
    model: Seq2Seq,
    average: WeightAverage | None,
    optimizer: torch.optim.Optimizer,
    schedule: LearningRateSchedule,
    group: ProcessGroup,
    device: torch.device,
    run_dir: RunDir,
) -> TrainingState:
    """Load a resumable checkpoint's weights (and their average), optimizer, schedule and random states;
    returns its counters."""
    try:
        trained = resumed.training_model if resumed.training_model is not None else resumed.weights.model
        model.load_state_dict(trained)
        if average is not None:
            average.load_state_dict(resumed.weights.model)
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
