"""Checkpoints: plain dicts of tensors and Python values, written atomically, loaded safely.

A checkpoint holds everything needed to translate (config, SentencePiece models, weights) and
to resume (optimizer, scheduler, RNG states, data position). Loading uses
`torch.load(weights_only=True)`, which refuses anything but tensors and plain values, so a
crafted file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from seq2seq.errors import UserError

FORMAT_VERSION = 1
KIND = "seq2seq-checkpoint"


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically: a temporary file, flushed to disk, then renamed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    payload = {"kind": KIND, "format_version": FORMAT_VERSION, **payload}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write (disk full) as RuntimeError
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        raise UserError(f"could not write checkpoint {path}: {reason}; the previous checkpoint is kept") from None


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
    return payload
