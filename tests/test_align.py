"""`seq2seq align`: word alignments and attention weights from forced decoding of given translations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import write_lines

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
