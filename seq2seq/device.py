"""Where tensors live and in which precision: device choice and autocast."""

from __future__ import annotations

import torch

from seq2seq.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, setting: str = "--device") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is a user error naming `setting`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting} is 'cuda' but no CUDA GPU is visible: use 'auto' or 'cpu'")
    return torch.device(name)


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """Autocast to `precision` ('bf16' or 'fp16'); disabled for 'fp32'."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
