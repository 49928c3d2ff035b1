"""Scoring given translations: log-probabilities per sentence and per piece, from Python and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import file_lines, one_line_error, write_lines

from seq2seq.checkpoint import load_trained
from seq2seq.cli import main
from seq2seq.config import DecodeConfig
from seq2seq.data import EncodedCorpus, ParallelDataset, collate
from seq2seq.ensemble import Ensemble
from seq2seq.model import sequence_loss
from seq2seq.score import score_lines
from seq2seq.search import decode_lines

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(toy_model: dict):
    return load_trained(toy_model["checkpoint"])


def test_mean_negative_log_likelihood_per_piece_is_the_training_loss(trained, corpus):
    """With label smoothing off and dropout off (eval mode), the loss is the mean NLL per target piece."""
    sources, targets = corpus
    scored = score_lines(trained.model, trained.tokenizer, sources, targets, CPU, batch_tokens=60)
    pieces = sum(len(s.pieces) for s in scored)
    mean_nll = -sum(s.log_prob for s in scored) / pieces
    src, tgt = trained.tokenizer.encode_src(sources), trained.tokenizer.encode_tgt(targets)
    dataset = ParallelDataset(EncodedCorpus.from_lists(src, tgt))
    with torch.no_grad():
        loss = sequence_loss(trained.model, collate([dataset[i] for i in range(len(dataset))]))
    assert mean_nll == pytest.approx(float(loss), rel=1e-4)
    assert pieces == sum(len(t) + 1 for t in tgt)


def test_the_score_of_a_greedy_output_is_its_search_log_probability(trained, corpus):
    lines = [corpus[0][0], "gato perro casa", corpus[0][5]]
    greedy = decode_lines(trained.model, trained.tokenizer, lines, CPU, DecodeConfig(beam=1))
    outputs = [trained.tokenizer.decode_tgt(best[0].ids) for best in greedy]
    scored = score_lines(trained.model, trained.tokenizer, lines, outputs, CPU)
    for best, score in zip(greedy, scored):
        assert score.log_prob == pytest.approx(best[0].log_prob, abs=1e-4)
        assert score.pieces[-1] == "</s>" and len(score.pieces) == len(best[0].ids) + 1
        assert score.per_piece == pytest.approx(score.log_prob / len(score.pieces))


def test_empty_sources_give_no_score_and_empty_targets_score_the_end_of_sentence(trained):
    scored = score_lines(trained.model, trained.tokenizer, ["", "uno", "uno"], ["one", "", "one"], CPU)
    assert scored[0] is None
    assert scored[1].pieces == ["</s>"] and scored[1].log_prob < scored[2].log_prob  # "uno" -> "one" is likely


def test_two_copies_of_a_model_score_as_that_model(trained, corpus):
    single = score_lines(trained.model, trained.tokenizer, corpus[0][:5], corpus[1][:5], CPU)
    double = score_lines(Ensemble([trained.model, trained.model]), trained.tokenizer, corpus[0][:5], corpus[1][:5], CPU)
    assert [s.log_prob for s in single] == pytest.approx([s.log_prob for s in double], abs=1e-5)


def test_score_from_the_command_line_as_tsv_and_json_lines(toy_model: dict, tmp_path: Path):
    src = write_lines(tmp_path / "in.es", ["uno dos", "", "gato"])
    tgt = write_lines(tmp_path / "in.en", ["one two", "", "cat"])
    checkpoint = str(toy_model["checkpoint"])
    assert main(["score", checkpoint, "--src", str(src), "--tgt", str(tgt), "-o", str(tmp_path / "s.tsv")]) == 0
    rows = file_lines(tmp_path / "s.tsv")
    assert len(rows) == 3 and rows[1] == ""
    total, per_piece = map(float, rows[0].split("\t"))
    assert total < 0 and per_piece == pytest.approx(total / 3, abs=1e-3)  # "▁one ▁two </s>"
    args = ["score", checkpoint, "--src", str(src), "--tgt", str(tgt), "--per-piece", "--format", "jsonl"]
    assert main([*args, "-o", str(tmp_path / "s.jsonl")]) == 0
    records = [json.loads(line) for line in file_lines(tmp_path / "s.jsonl")]
    assert len(records) == 3 and records[1] is None  # an empty source: null, still one line
    first = records[0]
    assert first["pieces"] == ["▁one", "▁two", "</s>"] and math.isclose(
        sum(first["piece_log_probs"]), first["log_prob"]
    )
    assert main([*args[:-2], "-o", str(tmp_path / "p.tsv")]) == 0
    assert file_lines(tmp_path / "p.tsv")[0].split("\t")[2].startswith("▁one:")


def test_misaligned_score_input_is_one_clear_error(toy_model: dict, tmp_path: Path, capsys):
    src = write_lines(tmp_path / "in.es", ["uno", "dos"])
    tgt = write_lines(tmp_path / "in.en", ["one"])
    assert main(["score", str(toy_model["checkpoint"]), "--src", str(src), "--tgt", str(tgt)]) == 2
    assert "misaligned" in one_line_error(capsys)
