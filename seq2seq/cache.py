"""The shared cache (data.cache_dir): entries built once, by one process, and checked on every read.

An entry is a directory named by a key of its inputs (e.g. corpus-<key>, spm-<key>). Any number of
trainings may share a cache, started at the same moment or on several machines over a shared disk:

- one process builds an entry, under the lock file .<name>.lock; the others wait, then read it
  (readers take the lock shared, so they check an entry side by side);
- it is built in a temporary directory and published by one atomic rename, so no reader ever
  sees half of it;
- its manifest.json, written last, lists each file's size and SHA-256: an entry that does not
  match (truncated, corrupted, a file missing) is reported and rebuilt. Checking reads the entry
  once per run (about as long as hashing the raw corpus, which every run does too);
- a full disk (or any failed write) is one clear line and leaves no half-built entry behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from seq2seq.errors import UserError
from seq2seq.locks import exclusive
from seq2seq.writing import make_directory, write_error

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def cached_entry(cache_dir: Path, name: str, build: Callable[[Path], None], what: str) -> Path:
    """The verified cache entry `cache_dir/name`; built first by `build(directory)` if missing or damaged.

    `what` names the entry in messages ("encoded training corpus").
    """
    make_directory(cache_dir, "data.cache_dir")
    entry, lock = cache_dir / name, cache_dir / f".{name}.lock"
    with exclusive(lock, wait=True, shared=True):  # readers check an entry side by side
        if entry_problem(entry) is None:
            return _reused(entry, what)
    with exclusive(lock, wait=True):  # one builder; whoever waited finds the entry built
        problem = entry_problem(entry)
        if problem is None:
            return _reused(entry, what)
        if entry.exists():
            log.warning("The cached %s at %s is damaged (%s): rebuilding it", what, entry, problem)
            shutil.rmtree(entry, ignore_errors=True)
        _remove_leftovers(cache_dir, name)  # temporary directories of builders that died: we hold the lock
        _build(cache_dir, entry, build, what)
    return entry


def _reused(entry: Path, what: str) -> Path:
    log.info("%s reused from cache: %s", what[0].upper() + what[1:], entry)
    return entry


def entry_problem(entry: Path) -> str | None:
    """Why the entry cannot be used ('missing', 'file x is truncated', ...), or None when it is whole."""
    if not (entry / MANIFEST).is_file():
        return "missing" if not entry.exists() else "it has no manifest"
    try:
        files = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))["files"]
        expected = {str(name): (int(meta["bytes"]), str(meta["sha256"])) for name, meta in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "its manifest is unreadable"
    for name, (size, digest) in sorted(expected.items()):
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes instead of {size}"
        if file_sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _build(cache_dir: Path, entry: Path, build: Callable[[Path], None], what: str) -> None:
    """Build into a temporary directory, write the manifest, publish by renaming; clean up on any failure."""
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=cache_dir))
        temporary.chmod(0o755)  # mkdtemp makes it private: a shared cache is read by other users too
    except OSError as exc:
        raise _write_error(what, entry, exc) from None
    try:
        build(temporary)
        _write_manifest(temporary)
        os.rename(temporary, entry)
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise _write_error(what, entry, exc) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _write_manifest(directory: Path) -> None:
    """Sizes and checksums of every file in `directory`, flushed to disk with them (written last)."""
    files = {}
    for path in sorted(directory.iterdir()):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[path.name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    with open(directory / MANIFEST, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"files": files}, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _remove_leftovers(cache_dir: Path, name: str) -> None:
    for leftover in cache_dir.glob(f".{name}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def _write_error(what: str, entry: Path, exc: OSError) -> UserError:
    return write_error(entry, exc, f"no part of the {what} was kept (data.cache_dir)")
