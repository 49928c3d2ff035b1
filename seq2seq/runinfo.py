"""The record of a run that travels in every checkpoint: versions, command line, data hashes."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str:
    """Installed version of a distribution, or 'not installed'."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def run_record(argv: Sequence[str], data_digests: Sequence[str]) -> dict:
    """Plain values describing how and where a checkpoint was made."""
    return {
        "versions": {name: package_version(name) for name in ("seq2seq", "torch", "sentencepiece", "sacrebleu")}
        | {"python": platform.python_version()},
        "command": " ".join(argv),
        "train_data_sha256": list(data_digests),
        "host": platform.node(),
        "saved_at": timestamp(),
    }


def timestamp() -> str:
    """The local time, as run records write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
