"""Builders: the optimizer's weight decay, the validator's decoding options, preparation workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import make_toy_config, write_toy_corpus

from seq2seq import builders
from seq2seq.config import config_from_dict
from seq2seq.distributed import ProcessGroup
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer


@pytest.fixture
def toy(tmp_path: Path) -> dict:
    return make_toy_config(tmp_path, write_toy_corpus(tmp_path))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_weight_decay_applies_to_weight_matrices_only(toy: dict, optimizer: str):
    toy["train"].update(optimizer=optimizer, weight_decay=0.1)
    config = config_from_dict(toy)
    model = Seq2Seq(config.model, 40, 40)
    built = builders.create_optimizer(config, model)
    decayed = {id(p) for group in built.param_groups if group["weight_decay"] == 0.1 for p in group["params"]}
    matrices = {id(p) for p in model.parameters() if p.dim() >= 2}
    assert decayed == matrices and matrices
    assert sum(len(g["params"]) for g in built.param_groups) == len(list(model.parameters()))
    # With zero gradients only the decay moves weights: matrices shrink, biases stay where they are.
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    built.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (p.dim() >= 2), name


def test_the_validator_decodes_greedily_without_truncation_in_training_batches(toy: dict, tokenizer: Tokenizer):
    toy["train"]["batch_tokens"] = 123
    toy["decode"] = {"beam": 4, "max_output_ratio": 2.5, "batch_tokens": 9000, "max_src_length": 50}
    config = config_from_dict(toy)
    validator = builders.create_validator(config, tokenizer, torch.device("cpu"), ProcessGroup())
    options = validator.decode
    assert (options.beam, options.max_output_ratio, options.batch_tokens, options.max_src_length) == (1, 2.5, 123, None)
    assert validator.dev is not None and len(validator.dev.src) == 30
    worker = builders.create_validator(config, tokenizer, torch.device("cpu"), ProcessGroup(world_size=2, rank=1))
    assert worker.dev is None  # only the main process validates


def test_preparation_workers_one_per_core_only_for_large_corpora(tmp_path: Path, monkeypatch):
    small = tmp_path / "small.txt"
    small.write_text("a\n")
    assert builders.preparation_workers(3, (small, small)) == 3
    assert builders.preparation_workers(0, (small, small)) == 1
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(20_000_001)
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert builders.preparation_workers(0, (big, small)) == 6


def test_one_process_trains_the_model_itself(toy: dict):
    config = config_from_dict(toy)
    model = Seq2Seq(config.model, 40, 40)
    assert builders.wrap_for_processes(model, ProcessGroup(), torch.device("cpu"), 1) is model
