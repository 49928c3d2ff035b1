"""seq2seq: a GRU encoder-decoder for machine translation with pluggable attention.

`from seq2seq import Translator` gives the Python API (seq2seq/translate.py); it is imported on first
use, so the command line does not load torch before it needs to.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Translator"]


def __getattr__(name: str) -> Any:
    if name == "Translator":
        from seq2seq.translate import Translator

        return Translator
    raise AttributeError(f"module 'seq2seq' has no attribute {name!r}")
