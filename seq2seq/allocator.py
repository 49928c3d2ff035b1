"""glibc's allocator, set for CPU training: large blocks are kept and reused instead of mapped afresh each step.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap`, and gives it
back with `munmap` when freed. A training step on the quickstart allocates several tensors of that size
(the logits and their gradients, [tokens, 4000] floats: 30-40 MiB), so every step pays the page faults of
touching them for the first time again: about 10 ms per 37 MiB tensor on the reference CPU. With mmap off
and trimming deferred, freed blocks stay in the heap and the next step reuses them: a training step of the
quickstart ran 1.10-1.13x faster for 3-9% more peak memory (scripts/bench/profile_step.py measures the step
with and without it, alternating in one process).

The process keeps its high-water mark of memory until it exits, which suits a training process (its peak is
its peak anyway) but not a long-lived server, so only training asks for it. Elsewhere than glibc on Linux
nothing changes. SEQ2SEQ_KEEP_FREED_MEMORY=0 turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # return freed memory at the top of the heap to the system only beyond 1 GiB


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from its heap and keep freed ones for reuse; True if it took effect."""
    mallopt = _mallopt()
    if os.environ.get("SEQ2SEQ_KEEP_FREED_MEMORY", "1") == "0" or mallopt is None:
        return False
    kept = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.debug("glibc keeps freed memory for reuse: %s", kept)
    return kept


def restore_default() -> None:
    """glibc's defaults again (mmap for large blocks, trimming at 128 KiB): for tests and A/B timings."""
    mallopt = _mallopt()
    if mallopt is None:
        return
    mallopt(M_MMAP_MAX, 65536)
    mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def _mallopt():
    """glibc's mallopt(int, int) -> int from the C library this process uses; None elsewhere (e.g. musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
