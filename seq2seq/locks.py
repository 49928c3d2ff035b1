"""Exclusive locks between processes: one writer per run directory, one builder per cache entry.

A lock is `flock` on a small file that holds the owner's pid and host. The kernel releases a flock
when its process dies, however it dies (`kill -9` included), so a lock left by a killed process is
free and simply taken over. A clean release empties the file, so a record found on taking a lock
names a holder that died.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from seq2seq.errors import UserError

log = logging.getLogger(__name__)


class LockBusy(Exception):
    """The lock is held by another process, described by `owner` (pid, host, since)."""

    def __init__(self, owner: dict):
        super().__init__(describe_owner(owner))
        self.owner = owner


def describe_owner(owner: dict) -> str:
    """'pid 123 on host, since 2026-11-30 10:00:00' (or what is known of it)."""
    if not owner:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"])) if "since" in owner else "?"
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, since {since}"


def read_owner(path: Path) -> dict:
    """What the lock file says of its last owner ({} when unreadable)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


@contextlib.contextmanager
def exclusive(path: Path, wait: bool) -> Iterator[dict]:
    """Hold an exclusive lock on `path` (created if needed); yields the previous owner's record.

    With wait=False a lock held by a live process raises LockBusy at once; with wait=True this blocks
    until the holder releases it (or dies).
    """
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below; "a+": never truncates a holder's record)
    except OSError as exc:
        raise UserError(f"cannot create the lock file {path}: {exc.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {path}: {exc.strerror}") from None
            if not wait:
                raise LockBusy(read_owner(path)) from None
            log.info("Waiting for %s, which holds %s", describe_owner(read_owner(path)), path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        previous = read_owner(path)  # left by a holder that died: a clean release empties the file
        _write_owner(handle, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        try:
            yield previous
        finally:
            _write_owner(handle, None)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_owner(handle, record: dict | None) -> None:
    """Replace the lock file's record (None: empty it); best effort, a full disk must not stop the run."""
    with contextlib.suppress(OSError):
        handle.seek(0)
        handle.truncate()
        if record is not None:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
