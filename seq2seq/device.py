"""Where tensors live and in which precision: device choice and autocast."""

from __future__ import annotations

import functools
from pathlib import Path

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


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 / AMX; "bf16" on Arm


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (its /proc/cpuinfo flags; True where there is none to read).

    Without it PyTorch emulates bf16 matmuls: on an AVX2-only CPU twelve 2048 x 2048 bf16 matmuls had
    not finished after ten minutes, where fp32 takes about a second.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # not Linux: nothing to go by, do not refuse
    return has_bf16_flag(cpuinfo)


def has_bf16_flag(cpuinfo: str) -> bool:
    """Whether the text of /proc/cpuinfo lists a bf16 flag (x86 'flags' or Arm 'Features' lines)."""
    flags = set()
    for line in cpuinfo.splitlines():
        name, _, values = line.partition(":")
        if name.strip() in ("flags", "Features"):
            flags.update(values.split())
    return bool(flags & NATIVE_BF16_FLAGS)


def check_precision(device: torch.device | str, precision: str, setting: str = "precision") -> None:
    """bf16 on a CPU without native bf16 is a UserError naming `setting` (it would crawl, not fail)."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not native_bf16():
        capability = torch.backends.cpu.get_cpu_capability()
        raise UserError(
            f"{setting} bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); this one ({capability}) would "
            "emulate it, many times slower than fp32: use fp32"
        )


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """Autocast to `precision` ('bf16' or 'fp16'); disabled for 'fp32'. bf16 is refused where the CPU lacks it."""
    check_precision(device, precision)
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)
