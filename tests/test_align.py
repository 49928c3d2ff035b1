"""Word alignments from attention: pieces to words, hard alignments, and `seq2seq align` (forced decoding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from helpers import write_lines

from seq2seq.align import pharaoh, word_alignment, word_spans
from seq2seq.cli import main


def test_align_writes_pharaoh_and_weights(toy_model, tmp_path: Path, capsys):
    src_lines = toy_model["src"].read_text().splitlines()[:5]
    ref_lines = toy_model["ref"].read_text().splitlines()[:5]
    src, tgt = write_lines(tmp_path / "a.es", src_lines), write_lines(tmp_path / "a.en", ref_lines)
    prefix = tmp_path / "out" / "toy"
    assert (
        main(["align", str(toy_model["checkpoint"]), "--src", str(src), "--tgt", str(tgt), "--output", str(prefix)])
        == 0
    )
    alignments = Path(f"{prefix}.align").read_text().splitlines()
    assert len(alignments) == 5
    weights = np.load(f"{prefix}.npz")
    for n, (line, source, target) in enumerate(zip(alignments, src_lines, ref_lines)):
        links = [tuple(map(int, link.split("-"))) for link in line.split()]
        assert sorted(j for _, j in links) == list(range(len(target.split())))  # each output word once
        assert all(0 <= i < len(source.split()) for i, _ in links)
        matrix = weights[f"weights_{n}"]
        assert matrix.shape == (len(weights[f"tgt_pieces_{n}"]) + 1, len(weights[f"src_pieces_{n}"]) + 1)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    # The toy model translates word for word in order: most links are on the diagonal.
    diagonal = sum(i == j for line in alignments for i, j in (map(int, x.split("-")) for x in line.split()))
    total = sum(len(line.split()) for line in alignments)
    assert diagonal / total > 0.5


def test_align_refuses_misaligned_input(toy_model, tmp_path: Path, capsys):
    src, tgt = write_lines(tmp_path / "a.es", ["uno dos"]), write_lines(tmp_path / "a.en", [])
    assert (
        main(
            [
                "align",
                str(toy_model["checkpoint"]),
                "--src",
                str(src),
                "--tgt",
                str(tgt),
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == (
        f"seq2seq: error: misaligned input: {src} has 1 lines but {tgt} has 0; "
        "line i of one must translate line i of the other\n"
    )


def test_word_spans_group_pieces_into_words():
    assert word_spans(["▁the", "▁ca", "t", "s", "▁sat"]) == [0, 1, 1, 1, 2]
    assert word_spans(["un", "▁word"]) == [0, 1]  # a first piece without '▁' still starts word 0
    assert word_spans(["▁", "x", "▁y"]) == [0, 0, 1]
    assert word_spans([]) == []


def test_word_alignment_of_identity_and_permutation_weights():
    pieces = ["▁a", "▁b", "▁c", "▁d"]
    assert word_alignment(pieces, ["▁w", "▁x", "▁y", "▁z"], torch.eye(4)) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    permutation = [2, 0, 3, 1]
    weights = torch.full((4, 4), 0.05)
    weights[torch.arange(4), torch.tensor(permutation)] = 0.85
    assert word_alignment(pieces, ["▁w", "▁x", "▁y", "▁z"], weights) == [(2, 0), (0, 1), (3, 2), (1, 3)]
    assert pharaoh(word_alignment(pieces, ["▁w", "▁x", "▁y", "▁z"], weights)) == "2-0 0-1 3-2 1-3"


def test_word_alignment_sums_source_pieces_and_pools_output_pieces():
    src = ["▁ab", "c", "▁d"]  # two source words: pieces 0-1 and piece 2
    out = ["▁x", "▁y", "z"]  # two output words: piece 0 and pieces 1-2
    weights = torch.tensor(
        [
            [0.3, 0.3, 0.4],  # piece 2 is the single most attended piece, but word 0 has 0.6
            [0.9, 0.0, 0.1],  # alone, '▁y' points at word 0 ...
            [0.0, 0.0, 1.0],  # ... and 'z' at word 1; together (0.9 vs 1.1) the word points at word 1
        ]
    )
    assert word_alignment(src, out, weights) == [(0, 0), (1, 1)]
    assert word_alignment([], out, torch.zeros(3, 0)) == [] and word_alignment(src, [], torch.zeros(0, 3)) == []
    assert pharaoh([]) == ""
