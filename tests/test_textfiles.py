"""Reading text files (seq2seq/textfiles.py): plain or gzip, strictly UTF-8, line numbers in errors;
counting lines and sampling them (for SentencePiece training)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from helpers import write_lines

from seq2seq.errors import UserError
from seq2seq.textfiles import count_lines, iter_lines, sample_lines


def test_invalid_utf8_names_the_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.es"
    path.write_bytes(b"uno\ndos\ntr\xe9s\ncuatro\n")
    with pytest.raises(UserError, match=rf"{path}, line 3: not valid UTF-8 \(byte 3\)"):
        list(iter_lines(path))


def test_corrupt_gzip_is_a_user_error(tmp_path: Path):
    path = tmp_path / "broken.es.gz"
    path.write_bytes(gzip.compress(b"uno\ndos\n")[:-12])
    with pytest.raises(UserError, match=rf"cannot read {path}"):
        list(iter_lines(path))


def test_windows_line_endings_and_missing_final_newline(tmp_path: Path):
    path = tmp_path / "crlf.es"
    path.write_bytes(b"uno\r\ndos\r\n\r\ntres")
    assert list(iter_lines(path)) == ["uno", "dos", "", "tres"]


@pytest.mark.parametrize(
    "data, lines",
    [(b"", 0), (b"uno\n", 1), (b"uno", 1), (b"uno\r\ndos\r\n\r\ntres", 4), (b"\n\n", 2)],
    ids=["empty", "one", "no-final-newline", "crlf", "blank-lines"],
)
def test_count_lines_counts_like_iter_lines(tmp_path: Path, data: bytes, lines: int):
    plain, zipped = tmp_path / "c.es", tmp_path / "c.es.gz"
    plain.write_bytes(data)
    zipped.write_bytes(gzip.compress(data))
    assert count_lines(plain) == count_lines(zipped) == lines == len(list(iter_lines(plain)))


def test_count_lines_of_a_corrupt_gzip_is_a_user_error(tmp_path: Path):
    path = tmp_path / "broken.es.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=rf"cannot read {path}: "):
        count_lines(path)


def test_sample_lines_keeps_everything_when_there_is_room(tmp_path: Path):
    first = write_lines(tmp_path / "a.es", ["uno", "", "dos"])
    second = write_lines(tmp_path / "b.en", ["   ", "one", "two"])
    assert sample_lines([first, second], limit=10, seed=0) == ["uno", "dos", "one", "two"]  # empty lines left out


def test_sample_lines_draws_limit_distinct_lines_repeatably(tmp_path: Path):
    first = write_lines(tmp_path / "a.es", [f"es {i}" for i in range(60)] + [""])
    second = write_lines(tmp_path / "b.en", [f"en {i}" for i in range(60)])
    sample = sample_lines([first, second], limit=10, seed=1)
    assert len(sample) == len(set(sample)) == 10
    assert set(sample) <= {f"es {i}" for i in range(60)} | {f"en {i}" for i in range(60)}
    assert any(s.startswith("en ") for s in sample)  # the second file is sampled too, not only the first
    assert sample_lines([first, second], limit=10, seed=1) == sample
    assert sample_lines([first, second], limit=10, seed=2) != sample


# --- found by fuzzing (tests/test_fuzz.py) ---------------------------------------------------------------------


def test_a_corrupt_gzip_stream_is_a_user_error(tmp_path: Path):
    """A valid gzip header over a corrupt deflate stream raised zlib.error, which is not an OSError."""
    path = tmp_path / "corrupt.es.gz"
    path.write_bytes(gzip.compress(b"uno\n", mtime=0)[:10] + b"\xff" * 16)  # block type 3 does not exist
    with pytest.raises(UserError, match=rf"^cannot read {path} \(after line 0\): Error -3 .*invalid block type"):
        list(iter_lines(path))
    with pytest.raises(UserError, match=rf"^cannot read {path}: Error -3 "):
        count_lines(path)


def test_a_utf8_byte_order_mark_starting_the_file_is_dropped(tmp_path: Path):
    """Editors on Windows start UTF-8 files with a BOM; it was read as an invisible first character of line 1."""
    plain, zipped = tmp_path / "bom.es", tmp_path / "bom.es.gz"
    data = b"\xef\xbb\xbfuno\n\xef\xbb\xbfdos\n"
    plain.write_bytes(data)
    zipped.write_bytes(gzip.compress(data))
    assert list(iter_lines(plain)) == list(iter_lines(zipped)) == ["uno", "\ufeffdos"]  # only the file's first
    assert count_lines(plain) == 2


def test_carriage_returns_end_a_line_only_before_a_line_feed_or_at_the_end(tmp_path: Path):
    path = tmp_path / "cr.es"
    path.write_bytes(b"uno\r\r\ndos\rtres\ncuatro\r")
    assert list(iter_lines(path)) == ["uno", "dos\rtres", "cuatro"]
    assert count_lines(path) == 3
