"""Writing files so that a failure (a full disk, a bad path) is one clear line and leaves nothing half-written.

- `make_directory`: a directory a setting names, or one line saying why it cannot be made;
- `atomic_file` / `write_atomically`: a temporary file, flushed, then renamed over the old one;
- `append_line`: one line added to a records file, or, if the write fails, the file cut back to
  what it held before (a JSON-lines file never keeps half a record).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from seq2seq.errors import UserError


def make_directory(path: Path, setting: str) -> None:
    """Create `path` and its parents; a file in the way or a refused write is a UserError naming `setting`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{setting} {path} cannot be created: a file is in the way; give a directory path") from None
    except OSError as exc:
        raise UserError(f"{setting} {path} cannot be created: {exc.strerror}") from None


def write_error(path: Path, exc: OSError, kept: str) -> UserError:
    """The one line for a failed write of `path`; `kept` says what survives ('the previous file is kept')."""
    reason = exc.strerror or str(exc)
    hint = "; free some space" if exc.errno == errno.ENOSPC else ""
    return UserError(f"could not write {path}: {reason}; {kept}{hint}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace `path` when the block ends (flushed to disk first, then renamed).

    If the block fails (an error, a full disk, a Ctrl-C), the temporary file is removed, the exception goes
    on, and `path` is as it was. Callers turn an OSError into their own one-line message.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove_quietly(temporary)
        raise


def write_atomically(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` (text is written as UTF-8) whole, or leave it as it was (a UserError on failure)."""
    try:
        with atomic_file(path) as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        raise write_error(path, exc, "the previous file is kept") from None


def append_line(path: Path, line: str) -> None:
    """Append `line` and a newline; on failure cut the file back to its old length (a UserError)."""
    data = memoryview((line + "\n").encode("utf-8"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(path, exc, "its earlier records are kept") from None
    try:
        size = os.fstat(fd).st_size
        while data:
            data = data[os.write(fd, data) :]  # unbuffered: a short write is retried, a failed one seen here
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # the part that reached the disk
        raise write_error(path, exc, "its earlier records are kept") from None
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
