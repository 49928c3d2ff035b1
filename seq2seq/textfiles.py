"""Reading text corpora: plain or gzip, strictly UTF-8, streamed line by line with line numbers in errors."""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from seq2seq.errors import UserError

# What reading a damaged .gz raises: a bad header or trailer is an OSError (gzip.BadGzipFile), a file cut short an
# EOFError, and a corrupt compressed stream zlib.error.
READ_ERRORS = (OSError, EOFError, zlib.error)


def iter_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or .gz), without line endings, one at a time.

    A line ends at LF; the CRs just before it (CRLF, or CR CR LF from a file converted twice) and at the end of
    the last line are dropped, a CR inside a line is kept (`count_lines` counts LFs too). A UTF-8 byte order
    mark starting the file is dropped.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
                except UnicodeDecodeError as exc:
                    raise UserError(
                        f"{path}, line {number}: not valid UTF-8 (byte {exc.start + 1}); convert the file to UTF-8"
                    ) from None
                yield line.removeprefix("\ufeff") if number == 1 else line
    except READ_ERRORS as exc:
        raise UserError(f"cannot read {path} (after line {number}): {exc}") from None


def count_lines(path: Path) -> int:
    """Lines in a text file (plain or .gz), counted in raw blocks without decoding: fast on big files."""
    opener = gzip.open if path.suffix == ".gz" else open
    count, last = 0, b"\n"
    try:
        with opener(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                count += block.count(b"\n")
                last = block[-1:]
    except READ_ERRORS as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    return count + (last != b"\n")


def sample_lines(paths: Sequence[Path], limit: int, seed: int) -> list[str]:
    """Up to `limit` non-empty lines drawn uniformly from the files (reservoir sampling: one pass, bounded memory)."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for path in paths:
        for line in iter_lines(path):
            if not line.strip():
                continue
            seen += 1
            if len(sample) < limit:
                sample.append(line)
            else:
                slot = rng.randrange(seen)
                if slot < limit:
                    sample[slot] = line
    return sample
