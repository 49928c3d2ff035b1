"""The moving average of the weights (seq2seq/ema.py, train.ema_decay): the update rule and its warm-up, and a
run that keeps one: validation and the weights checkpoints use the average, last.pt also keeps the trained
weights, training itself is unchanged, and a resumed run continues both exactly."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from helpers import assert_same_weights, make_toy_config, regularised_toy_config, write_toy_corpus

from seq2seq.checkpoint import load_trained
from seq2seq.config import ConfigError, ModelConfig, config_from_dict
from seq2seq.ema import WeightAverage
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.rundir import read_records
from seq2seq.train import prepared_run, train
from seq2seq.validation import load_dev_set


def tiny_model(seed: int = 0, tie: bool = False) -> Seq2Seq:
    torch.manual_seed(seed)
    config = ModelConfig(embedding_size=16, encoder_hidden_size=8, decoder_hidden_size=16, tie_embeddings=tie)
    return Seq2Seq(config, 20, 20)


def perturb(model: Seq2Seq) -> None:
    """Move every weight of `model` somewhere else, as an update would."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))


def cloned(state: dict) -> dict:
    return {name: tensor.clone() for name, tensor in state.items()}


# --- WeightAverage -----------------------------------------------------------------------------------------


def test_decay_warms_up_towards_the_configured_decay():
    average = WeightAverage(tiny_model(), 0.999)
    assert average.decay_at(1) == pytest.approx(2 / 11)
    assert average.decay_at(10) == pytest.approx(11 / 20)
    decays = [average.decay_at(step) for step in range(1, 20_000)]
    assert all(a <= b for a, b in itertools.pairwise(decays))
    assert max(decays) == 0.999 and decays[-1] == 0.999
    first_at_decay = next(step for step, decay in enumerate(decays, start=1) if decay == 0.999)
    assert first_at_decay == math.ceil((10 * 0.999 - 1) / (1 - 0.999))  # (1 + s) / (10 + s) >= 0.999
    assert WeightAverage(tiny_model(), 0.5).decay_at(1000) == 0.5


@pytest.mark.parametrize("step", [1, 7, 50_000])
def test_one_update_is_the_lerp_with_the_decay_of_its_step(step: int):
    model = tiny_model()
    average = WeightAverage(model, 0.99)
    before = cloned(average.state_dict())
    perturb(model)
    average.update(model, step)
    decay = min(0.99, (1 + step) / (10 + step))
    trained = model.state_dict()
    for name, tensor in average.state_dict().items():
        expected = decay * before[name] + (1 - decay) * trained[name]
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(tensor, before[name]) and not torch.equal(tensor, trained[name]), name


def test_the_average_is_a_separate_frozen_copy_in_eval_mode():
    model = tiny_model()
    model.train()
    average = WeightAverage(model, 0.9)
    assert not average.model.training
    assert all(not p.requires_grad for p in average.model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the trained model is untouched
    before = cloned(average.state_dict())
    perturb(model)  # the optimizer moving the trained weights ...
    assert_same_weights(average.state_dict(), before)  # ... does not move the average until update()
    shared = {p.data_ptr() for p in model.parameters()} & {p.data_ptr() for p in average.model.parameters()}
    assert not shared


def test_a_tied_weight_is_averaged_once_and_stays_tied():
    model = tiny_model(tie=True)
    average = WeightAverage(model, 0.9)
    before = average.state_dict()["decoder.embedding.weight"].clone()
    perturb(model)
    average.update(model, 100)
    decoder = average.model.decoder
    assert decoder.output.weight is decoder.embedding.weight
    expected = 0.9 * before + 0.1 * model.decoder.embedding.weight.detach()
    torch.testing.assert_close(decoder.embedding.weight, expected, rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_restores_the_average():
    model = tiny_model()
    average = WeightAverage(model, 0.9)
    perturb(model)
    average.update(model, 3)
    restored = WeightAverage(tiny_model(seed=1), 0.9)
    restored.load_state_dict(average.state_dict())
    assert_same_weights(restored.state_dict(), average.state_dict())
    # The state dict is a model state dict: a plain Seq2Seq loads it, so translating needs no WeightAverage.
    plain = tiny_model(seed=2)
    plain.load_state_dict(average.state_dict())
    assert_same_weights(plain.state_dict(), average.state_dict())
    # Later updates of the restored average continue exactly as the original's.
    perturb(model)
    average.update(model, 4)
    restored.update(model, 4)
    assert_same_weights(restored.state_dict(), average.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_ema_decay_outside_zero_to_one_is_a_config_error(tmp_path: Path, decay: float):
    data = make_toy_config(tmp_path, {"train": "t", "dev": None})
    data["train"]["ema_decay"] = decay
    with pytest.raises(ConfigError, match=r"'train.ema_decay' must be in \(0, 1\)"):
        config_from_dict(data)


# --- training with a moving average ------------------------------------------------------------------------


def ema_toy_config(directory: Path, corpus: dict, run: str, max_steps: int, decay: float = 0.9) -> dict:
    """The regularised toy config (dropout, label smoothing) with a moving average of the weights."""
    config = regularised_toy_config(directory, corpus, run, max_steps)
    config["train"]["ema_decay"] = decay
    return config


def dev_loss(model: Seq2Seq, config: dict) -> float:
    """The dev loss recomputed from scratch: mean cross-entropy per target token over all dev batches."""
    trained = config_from_dict(config)
    dev = load_dev_set(trained, load_trained(Path(config["train"]["run_dir"]) / "best.pt").tokenizer)
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in dev.batches:
            total += sequence_loss(model, batch).item() * batch.num_tgt_tokens
            tokens += batch.num_tgt_tokens
    return total / tokens


def test_validation_and_weights_checkpoints_use_the_average(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path)
    config = ema_toy_config(tmp_path, corpus, "run", max_steps=8)
    config["data"]["dev"] = corpus["dev"]
    config["train"].update(validate_every=4, keep_checkpoints=2)
    summary = train(config_from_dict(config))
    run_dir = Path(config["train"]["run_dir"])
    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    steps = {step: torch.load(run_dir / f"step-{step:07d}.pt", weights_only=True) for step in (4, 8)}
    assert last["format_version"] == 4 and last.keys() - best.keys() >= {"training_model", "optimizer"}
    assert "training_model" not in best and all("training_model" not in s for s in steps.values())
    # The average and the trained weights differ; the weights checkpoints hold the average.
    assert any(not torch.equal(last["model"][k], last["training_model"][k]) for k in last["model"])
    assert_same_weights(steps[8]["model"], last["model"])
    assert_same_weights(best["model"], steps[summary["best_step"]]["model"])
    assert any(not torch.equal(best["model"][k], last["training_model"][k]) for k in best["model"])
    assert_same_weights(load_trained(run_dir / "last.pt").model.state_dict(), last["model"])
    # Validation scored the average: its dev loss, recomputed, is the one recorded; the trained weights' is not.
    recorded = {r["step"]: r["dev_loss"] for r in read_records(run_dir / "metrics.jsonl")}
    assert recorded.keys() == {4, 8}
    for step in steps:
        assert dev_loss(load_trained(run_dir / f"step-{step:07d}.pt").model, config) == pytest.approx(
            recorded[step], rel=1e-5
        )
    trained = load_trained(run_dir / "last.pt").model
    trained.load_state_dict(last["training_model"])
    assert abs(dev_loss(trained, config) - recorded[8]) > 1e-3


def test_the_average_follows_the_trained_weights_without_changing_training(tmp_path: Path):
    """An EMA run trains exactly as a run without one, and its average is the formula applied to each step."""
    corpus = write_toy_corpus(tmp_path)
    steps = 4
    plain = regularised_toy_config(tmp_path, corpus, "plain", max_steps=steps)
    plain["train"].update(validate_every=1, keep_checkpoints=steps)  # step-N.pt: the trained weights of step N
    train(config_from_dict(plain))
    with prepared_run(config_from_dict(ema_toy_config(tmp_path, corpus, "ema", max_steps=steps))) as trainer:
        average = cloned(trainer.average.state_dict())  # step 0: the initial weights
        assert_same_weights(average, trainer.model.state_dict())
        trainer.run()
        decay_at = trainer.average.decay_at
    ema_last = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    plain_last = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)
    assert "training_model" not in plain_last
    assert_same_weights(ema_last["training_model"], plain_last["model"])
    for step in range(1, steps + 1):
        weights = torch.load(tmp_path / "plain" / f"step-{step:07d}.pt", weights_only=True)["model"]
        average = {k: torch.lerp(v, weights[k], 1.0 - decay_at(step)) for k, v in average.items()}
    for name, tensor in ema_last["model"].items():
        torch.testing.assert_close(tensor, average[name], rtol=1e-6, atol=1e-7, msg=name)


def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path)

    def config(run: str, max_steps: int):
        return config_from_dict(ema_toy_config(tmp_path, corpus, run, max_steps))

    train(config("whole", 8))
    first_half = train(config("halves", 3))
    assert first_half["epochs"] % 1 != 0, "the break should fall inside an epoch"
    assert train(config("halves", 8), resume=True)["steps"] == 8
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    halves = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)
    assert [r["train_loss"] for r in read_records(tmp_path / "halves" / "progress.jsonl")] == [
        r["train_loss"] for r in read_records(tmp_path / "whole" / "progress.jsonl")
    ]
    assert_same_weights(whole["model"], halves["model"])
    assert_same_weights(whole["training_model"], halves["training_model"])
    assert any(not torch.equal(whole["model"][k], whole["training_model"][k]) for k in whole["model"])


def test_a_run_without_ema_keeps_one_set_of_weights(tmp_path: Path):
    corpus = write_toy_corpus(tmp_path)
    with prepared_run(config_from_dict(regularised_toy_config(tmp_path, corpus, "run", max_steps=2))) as trainer:
        assert trainer.average is None and trainer.evaluated_model is trainer.model
        trainer.run()
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert "training_model" not in last
