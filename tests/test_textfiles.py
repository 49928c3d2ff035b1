"""Reading text files (seq2seq/textfiles.py): plain or gzip, strictly UTF-8, line numbers in errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from seq2seq.errors import UserError
from seq2seq.textfiles import iter_lines


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
