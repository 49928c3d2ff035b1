"""Checkpoints: their schema, format version and migrations; atomic saving, safe loading.

Two kinds, each a dataclass that converts to and from the plain payload on disk:
- `WeightsCheckpoint`: what translating needs (config, SentencePiece models, weights) and the
  run's record. best.pt, step-*.pt and averaged checkpoints are of this kind.
- `TrainingCheckpoint`: a weights checkpoint plus what resuming needs (optimizer, schedule,
  `TrainingState`, random states). last.pt is of this kind.

Loading uses `torch.load(weights_only=True)`, which refuses anything but tensors and plain
values, so a crafted file cannot run code. An older format is migrated step by step
(`MIGRATIONS`) when it is read, so checkpoints written by earlier versions keep working.
Every payload key is spelled in this module and nowhere else.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import Tensor

from seq2seq.attention import ATTENTION_TYPES
from seq2seq.config import Config, config_from_dict, migrate_keys
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer
from seq2seq.writing import atomic_file

FORMAT_VERSION = 4
KIND = "seq2seq-checkpoint"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically: a temporary file, flushed to disk, then renamed."""
    path = Path(path)
    payload = {"kind": KIND, "format_version": FORMAT_VERSION, **payload}
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:  # a second Ctrl-C included, a failure leaves no temporary file
            writer = _WriteErrors(handle)
            torch.save(payload, cast(IO[bytes], writer))
    except (OSError, RuntimeError) as exc:  # torch.save turns a failed write into a RuntimeError
        cause = writer.error if writer is not None and writer.error is not None else exc
        reason = getattr(cause, "strerror", None) or str(cause).strip().splitlines()[0]
        raise UserError(f"could not write checkpoint {path}: {reason}; the previous checkpoint is kept") from None


class _WriteErrors:
    """A file handle for torch.save that keeps the OSError of a failed write (a full disk), which torch
    would only report as "enforce fail at inline_container.cc ... unexpected pos"."""

    def __init__(self, handle: Any):
        self.handle, self.name = handle, handle.name
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()

    def fileno(self) -> int:
        return self.handle.fileno()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, with one-line errors for anything else."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory: give a checkpoint file such as {path / 'best.pt'}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # garbage can make torch warn before it fails: one line is enough
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):  # an object that is not plain data
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors and plain values "
                "(it may run code when loaded); only checkpoints written by seq2seq are accepted"
            ) from None
        raise UserError(f"{path} is not a seq2seq checkpoint (truncated, corrupt or another format)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt: {reason})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise UserError(f"{path} is not a seq2seq checkpoint (it was written by another program)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {version!r}, newer than this seq2seq reads ({FORMAT_VERSION}): upgrade seq2seq"
        )
    if version < min(MIGRATIONS):
        raise UserError(
            f"{path} has checkpoint format {version}, older than any this seq2seq reads ({min(MIGRATIONS)})"
        )
    return migrate(payload)


# --- migrations: each takes a payload of version N and returns it as version N + 1 ---------------


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 2: `contents` names the kind; the training state lost `history` and renamed its skip
    counters; decoding options moved to a `decode` section; attention keeps only its variant's options."""
    payload["contents"] = "training" if "optimizer" in payload else "weights"
    state = payload.get("training_state")
    if isinstance(state, dict):
        state.pop("history", None)
        state["skipped_updates"] = state.pop("bad_steps", 0)
        state["skipped_in_a_row"] = state.pop("consecutive_bad", 0)
    config = payload.get("config")
    if isinstance(config, dict):
        config = migrate_keys(config)
        attention = config.get("model", {}).get("attention")
        if isinstance(attention, dict) and attention.get("type") in ATTENTION_TYPES:
            options = {f.name for f in dataclasses.fields(ATTENTION_TYPES[attention["type"]].options_type)}
            config["model"]["attention"] = {k: v for k, v in attention.items() if k == "type" or k in options}
        payload["config"] = config
    _split_optimizer_groups(payload)
    return payload


def _split_optimizer_groups(payload: dict[str, Any]) -> None:
    """Format 1 had one parameter group; format 2 has weight matrices (decayed) then the rest (not decayed)."""
    optimizer, weights = payload.get("optimizer"), payload.get("model")
    if not isinstance(optimizer, dict) or not isinstance(weights, dict) or len(optimizer.get("param_groups", [])) != 1:
        return
    seen, parameters = set(), []  # model.parameters() order: the state dict's, a tied weight once
    for tensor in weights.values():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            parameters.append(tensor)
    group = optimizer["param_groups"][0]
    if len(group["params"]) != len(parameters):
        return  # another model: resuming reports it
    matrices = [i for i, p in zip(group["params"], parameters) if p.dim() >= 2]
    others = [i for i, p in zip(group["params"], parameters) if p.dim() < 2]
    renumber = {old: new for new, old in enumerate(matrices + others)}
    optimizer["state"] = {renumber[i]: state for i, state in optimizer["state"].items()}
    optimizer["param_groups"] = [
        {**group, "params": [renumber[i] for i in ids], "weight_decay": decay}
        for ids, decay in ((matrices, group.get("weight_decay", 0.0)), (others, 0.0))
        if ids
    ]


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 3: the decode section gained the sampling and coverage options; their defaults fill them in."""
    return payload


def _v3_to_v4(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 4: a training checkpoint may carry `training_model` (the weights being trained when `model` holds
    their moving average); the config gained train.init_from, train.ema_decay, train.tensorboard and
    tokenizer.sampling, whose defaults (off) fill them in."""
    return payload


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload of any older format brought to FORMAT_VERSION, one migration at a time."""
    version = payload["format_version"]
    if version < FORMAT_VERSION:
        payload["migrated_from"] = version
    while version < FORMAT_VERSION:
        payload = MIGRATIONS[version](payload)
        version += 1
        payload["format_version"] = version
    return payload


# --- the schema -------------------------------------------------------------------------------


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
    skipped_updates: int = 0  # updates skipped for a non-finite loss or gradient
    skipped_in_a_row: int = 0
    world_size: int = 1  # processes the run trains with (torchrun)
    validation_due: bool = False  # stopped (Ctrl-C) at a validation step before validating: done on resuming


@dataclass
class WeightsCheckpoint:
    """What translating needs: the config, the SentencePiece models and the weights, with the run's record."""

    config: dict[str, Any]  # plain values, as config_to_dict gives them
    tokenizer: dict[str, Any]
    model: dict[str, Tensor]
    step: int | None = None
    best_bleu: float | None = None
    run: dict[str, Any] = field(default_factory=dict)  # versions, command line, data hashes (runinfo)
    averaged_from: list[str] | None = None

    def to_payload(self) -> dict[str, Any]:
        """The plain dict written to disk."""
        return {"contents": "weights", **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: str | Path) -> WeightsCheckpoint:
        """The weights part of a (migrated) payload; a UserError names what is missing."""
        missing = [key for key in ("config", "tokenizer", "model") if not isinstance(payload.get(key), dict)]
        if missing:
            raise UserError(
                f"{path} is not a complete seq2seq checkpoint ({', '.join(missing)} missing): "
                "use a best.pt, last.pt or step-*.pt that seq2seq wrote"
            )
        return cls(**{f.name: payload[f.name] for f in dataclasses.fields(cls) if f.name in payload})


@dataclass
class TrainingCheckpoint:
    """A weights checkpoint plus what resuming needs: optimizer, schedule, counters and random states.

    With a moving average of the weights (train.ema_decay), `weights.model` holds the average (what
    translating uses) and `training_model` the weights the optimizer updates.
    """

    weights: WeightsCheckpoint
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    state: TrainingState
    rng: dict[str, Any]  # python: one state; torch (and cuda): one state per process
    training_model: dict[str, Tensor] | None = None  # None: the optimizer's weights are weights.model

    def to_payload(self) -> dict[str, Any]:
        """The plain dict written to disk."""
        payload = {
            **self.weights.to_payload(),
            "contents": "training",
            "optimizer": self.optimizer,
            "schedule": self.schedule,
            "training_state": dataclasses.asdict(self.state),
            "rng": self.rng,
        }
        if self.training_model is not None:
            payload["training_model"] = self.training_model
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: str | Path) -> TrainingCheckpoint:
        """A resumable checkpoint; a UserError says what is missing."""
        missing = [
            k for k in ("model", "optimizer", "schedule", "training_state", "rng", "tokenizer") if k not in payload
        ]
        if missing:
            raise UserError(
                f"{path} holds no training state ({', '.join(missing)} missing): it cannot be resumed from; "
                "start a new run, or restore the last.pt the run wrote"
            )
        known = {f.name for f in dataclasses.fields(TrainingState)}
        state = TrainingState(**{k: v for k, v in payload["training_state"].items() if k in known})
        weights = WeightsCheckpoint.from_payload(payload, path)
        return cls(
            weights, payload["optimizer"], payload["schedule"], state, payload["rng"], payload.get("training_model")
        )


def stored_config(payload: dict[str, Any]) -> Any:
    """The config a (migrated) payload was trained with, as stored: a plain dict, or whatever a damaged file holds."""
    return payload.get("config")


def describe(payload: dict[str, Any]) -> dict[str, Any]:
    """What `seq2seq info` shows: the format on disk (and how it was read), kind, step, BLEU, run record, config."""
    shown = {"format_version": payload.get("migrated_from", payload.get("format_version"))}
    if "migrated_from" in payload:
        shown["read_as_format"] = payload["format_version"]
    keys = ("contents", "step", "best_bleu", "averaged_from", "run", "config")
    return shown | {key: payload[key] for key in keys if payload.get(key) is not None}


def save(checkpoint: WeightsCheckpoint | TrainingCheckpoint, path: str | Path) -> None:
    """Write a checkpoint atomically (see save_checkpoint)."""
    save_checkpoint(checkpoint.to_payload(), path)


def read_weights(path: str | Path, map_location: str | torch.device = "cpu") -> WeightsCheckpoint:
    """The weights checkpoint at `path` (a training checkpoint's weights part works too)."""
    return WeightsCheckpoint.from_payload(load_checkpoint(path, map_location), path)


def read_training(path: str | Path) -> TrainingCheckpoint:
    """The resumable checkpoint at `path` (last.pt)."""
    return TrainingCheckpoint.from_payload(load_checkpoint(path), path)


@dataclass
class Trained:
    """What inference needs from a checkpoint: the model (eval mode), its tokenizer and config."""

    model: Seq2Seq
    tokenizer: Tokenizer
    config: Config
    step: int | None
    best_bleu: float | None = None
    run: dict[str, Any] = field(default_factory=dict)  # the run's record (versions, command, data hashes)
    averaged_from: list[str] | None = None


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Trained:
    """A checkpoint's model (eval mode, on `device`), tokenizer, config and step, with one-line errors."""
    checkpoint = read_weights(path, map_location=device)
    try:
        config = config_from_dict(checkpoint.config)
        tokenizer = Tokenizer.from_state_dict(checkpoint.tokenizer)
        model = Seq2Seq(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        model.load_state_dict(checkpoint.model)
    except (KeyError, RuntimeError, TypeError, UserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{path} is not a complete seq2seq checkpoint ({reason})") from None
    return Trained(
        model.to(device).eval(),
        tokenizer,
        config,
        checkpoint.step,
        checkpoint.best_bleu,
        checkpoint.run,
        checkpoint.averaged_from,
    )


def average_checkpoints(paths: list[str], output: str) -> dict[str, Any]:
    """Average the weights of several checkpoints of one run into a new weights-only checkpoint."""
    if len(paths) < 2:
        raise UserError("give at least two checkpoints to average")
    checkpoints = [read_weights(p) for p in paths]
    reference = checkpoints[-1]
    for path, checkpoint in zip(paths, checkpoints):
        if checkpoint.config.get("model") != reference.config.get("model"):
            raise UserError(
                f"{path} has a different model config from {paths[-1]}: only checkpoints of one run can be averaged"
            )
        if checkpoint.model.keys() != reference.model.keys():
            raise UserError(f"{path} has different parameters from {paths[-1]}")
    averaged = {}
    for name, tensor in reference.model.items():
        if tensor.is_floating_point():
            total = sum((c.model[name].double() for c in checkpoints), torch.zeros_like(tensor, dtype=torch.float64))
            averaged[name] = total.div(len(checkpoints)).to(tensor.dtype)
        else:
            averaged[name] = tensor
    result = dataclasses.replace(reference, model=averaged, best_bleu=None, averaged_from=[str(p) for p in paths])
    save(result, output)
    return {"output": output, "averaged": len(paths), "from": [str(p) for p in paths]}
