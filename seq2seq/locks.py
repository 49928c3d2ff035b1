"""Locks between processes: one writer per run directory, one builder per cache entry.

A lock is a POSIX record lock (`fcntl.lockf`) on a small file that holds the owner's pid and host.
The kernel releases it when its process dies, however it dies (`kill -9` included), so a lock left
by a killed process is free and simply taken over. A clean release empties the file, so a record
found on taking a lock names a holder that died. Record locks, unlike flock, are not inherited by
forked children (DataLoader workers): a killed trainer's lock is free at once, and they work over
NFS. Their one trap: closing any descriptor of the file drops the process's lock on it, so while a
lock is held, the file is read only through the handle that holds it.
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
from typing import IO

from seq2seq.errors import UserError

log = logging.getLogger(__name__)

BUSY = (errno.EAGAIN, errno.EACCES)  # what lockf says of a lock another process holds


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
    """What the lock file says of its last owner ({} when unreadable). Not for a lock this process holds."""
    try:
        return _parse_owner(path.read_text(encoding="utf-8"))
    except OSError:
        return {}


@contextlib.contextmanager
def exclusive(path: Path, wait: bool, shared: bool = False) -> Iterator[dict]:
    """Hold a lock on `path` (created if needed); yields the record of a previous holder that died.

    With wait=False a lock held by a live process raises LockBusy at once; with wait=True this blocks
    until the holder releases it (or dies). shared=True takes a reader's lock: any number of readers
    at once, none while a writer holds it (a reader writes no record and needs no write access).
    """
    handle = _locked_handle(path, wait, shared)
    with handle:
        previous = {} if shared else _read_held(handle)
        if not shared:
            _write_owner(handle, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        try:
            yield previous
        finally:
            if not shared:
                _write_owner(handle, None)
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _locked_handle(path: Path, wait: bool, shared: bool) -> IO[str]:
    """An open handle of `path` with the lock taken (the file it names, not one unlinked meanwhile)."""
    kind = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        handle = _open(path, shared)
        try:
            fcntl.lockf(handle, kind | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in BUSY:
                handle.close()
                raise UserError(f"cannot lock {path}: {exc.strerror} (does this filesystem support locks?)") from None
            if not wait:
                owner = _read_held(handle)
                handle.close()
                raise LockBusy(owner) from None
            log.info("Waiting for %s, which holds %s", describe_owner(_read_held(handle)), path)
            try:
                fcntl.lockf(handle, kind)
            except OSError as error:
                handle.close()
                raise UserError(f"cannot lock {path}: {error.strerror}") from None
        if _same_file(handle, path):
            return handle
        handle.close()  # removed or replaced while we waited: lock the file that is there now


def _open(path: Path, shared: bool) -> IO[str]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # 0o666 less the umask: other users' runs may lock it
        return os.fdopen(fd, "r+", encoding="utf-8")
    except OSError as exc:
        if not (shared and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)):
            raise UserError(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:  # a reader of someone else's (or a read-only) cache
        return open(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot open the lock file {path}: {exc.strerror}") from None


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_held(handle: IO[str]) -> dict:
    """The record in a lock file, read through the handle (another descriptor would drop a held lock)."""
    try:
        handle.seek(0)
        return _parse_owner(handle.read())
    except (OSError, ValueError):
        return {}


def _parse_owner(text: str) -> dict:
    try:
        owner = json.loads(text) if text.strip() else {}
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _write_owner(handle: IO[str], record: dict | None) -> None:
    """Replace the lock file's record (None: empty it); best effort, a full disk must not stop the run."""
    with contextlib.suppress(OSError, ValueError):
        handle.seek(0)
        handle.truncate()
        if record is not None:
            handle.write(json.dumps(record) + "\n")
        handle.flush()
