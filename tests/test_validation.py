"""Validation: dev loss, perplexity and BLEU, the best score and patience."""

from __future__ import annotations

import math

import pytest
import torch

from seq2seq.checkpoint import TrainingState, load_trained
from seq2seq.config import DecodeConfig
from seq2seq.validation import Validator, make_dev_set


@pytest.fixture(scope="module")
def trained(toy_model: dict):
    return load_trained(toy_model["checkpoint"])


def greedy() -> DecodeConfig:
    return DecodeConfig(beam=1, batch_tokens=500, max_src_length=None)


def test_a_dev_set_keeps_every_line_for_bleu_and_only_non_empty_pairs_for_the_loss(tokenizer):
    src, ref = ["uno dos", "", "tres", "cuatro"], ["one two", "zero", "", "four"]
    dev = make_dev_set(src, ref, tokenizer, batch_tokens=100)
    assert dev.src == src and dev.ref == ref
    assert sum(batch.src.size(0) for batch in dev.batches) == 2


def test_validation_scores_the_memorised_toy_corpus_and_tracks_the_best(trained, toy_model: dict):
    src = toy_model["src"].read_text(encoding="utf-8").splitlines()
    ref = toy_model["ref"].read_text(encoding="utf-8").splitlines()
    dev = make_dev_set(src, ref, trained.tokenizer, batch_tokens=500)
    validator = Validator(dev, trained.tokenizer, torch.device("cpu"), greedy(), early_stopping_patience=2)
    state = TrainingState(step=80, elapsed=90.0)
    record, improved = validator.validate(trained.model, state)
    assert improved and record["dev_bleu"] > 95 and record["dev_loss"] < 0.1
    assert record["dev_ppl"] == pytest.approx(math.exp(record["dev_loss"]))
    assert (record["step"], record["minutes"], state.best_bleu, state.best_step) == (80, 1.5, record["dev_bleu"], 80)
    state.step = 90
    for without in (1, 2):  # the same model again: no better, so patience runs out after 2
        assert validator.early_stop(state) is None
        _, improved = validator.validate(trained.model, state)
        assert not improved and state.validations_without_improvement == without and state.best_step == 80
    assert validator.early_stop(state) == "early stopping: dev BLEU did not improve for 2 validations"


def test_without_a_dev_set_every_validation_counts_as_the_best(trained):
    validator = Validator(None, trained.tokenizer, torch.device("cpu"), greedy(), early_stopping_patience=None)
    record, improved = validator.validate(trained.model, TrainingState(step=5))
    assert improved and set(record) == {"step", "epoch", "minutes"}
