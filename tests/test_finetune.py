"""Fine-tuning (train.init_from, seq2seq train --init-from): a new run starts from a checkpoint's weights and
SentencePiece model with a new optimizer and schedule, records where it started, resumes exactly, and refuses
a checkpoint that does not fit its config with one line."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from helpers import (
    NOT_A_CHECKPOINT,
    TOY_VOCAB,
    assert_same_weights,
    assert_subprocess_one_line_error,
    checkpoint_copy,
    make_toy_config,
    random_bytes,
    regularised_toy_config,
    run_seq2seq,
    toy_pairs,
    write_config,
    write_toy_corpus,
)

from seq2seq.builders import read_initial_weights
from seq2seq.checkpoint import load_trained, read_weights
from seq2seq.cli import main
from seq2seq.config import TokenizerConfig, config_from_dict, load_config
from seq2seq.errors import UserError
from seq2seq.rundir import read_records
from seq2seq.schedule import LearningRateSchedule
from seq2seq.tokenizer import Tokenizer, train_sentencepiece
from seq2seq.train import prepared_run, train


def finetune_config(tmp_path: Path, checkpoint: Path, run: str = "ft", max_steps: int = 3) -> dict:
    """The toy config (its corpus written anew in tmp_path) fine-tuning `checkpoint` for a few steps."""
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["train"].update(
        run_dir=str(tmp_path / run), init_from=str(checkpoint), max_steps=max_steps, validate_every=max_steps
    )
    return config


def expected_record(toy_model: dict, checkpoint: Path) -> dict:
    """What a run fine-tuned from a copy of the toy model's best.pt records about it."""
    return {
        "path": str(checkpoint),
        "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "step": toy_model["summary"]["best_step"],
        "best_bleu": toy_model["summary"]["best_dev_bleu"],
        "name": "tiny",
    }


def first_loss(run_dir: Path) -> float:
    return read_records(run_dir / "progress.jsonl")[0]["train_loss"]


# --- the start: the checkpoint's weights and tokenizer, a new optimizer -----------------------------


def test_fine_tuning_starts_from_the_checkpoints_weights_and_tokenizer(tmp_path: Path, toy_model):
    """Whatever the config's tokenizer section says, the checkpoint's SentencePiece model is used, not trained."""
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    config = finetune_config(tmp_path, checkpoint)
    config["tokenizer"] = {"vocab_size": 200, "model_type": "unigram", "joint": False}
    initial = read_weights(checkpoint)
    with prepared_run(config_from_dict(config)) as trainer:
        assert_same_weights(trainer.model.state_dict(), initial.model)
        assert trainer.state.step == 0 and trainer.optimizer.state_dict()["state"] == {}
        tokenizer = trainer.data.tokenizer
        assert tokenizer.state_dict() == initial.tokenizer
        # The corpus is encoded with the checkpoint's tokenizer.
        sources = Path(f"{config['data']['train']}.es").read_text().splitlines()
        encoded = [trainer.data.dataset.corpus.pair(i)[0].tolist() for i in range(len(sources))]
        assert encoded == tokenizer.encode_src(sources)
        summary = trainer.run()
    run_dir = tmp_path / "ft"
    model_file = run_dir / "spm.joint.model"
    assert model_file.read_bytes() == (toy_model["run_dir"] / "spm.joint.model").read_bytes()
    assert model_file.read_bytes() == initial.tokenizer["src_model"]
    assert not (run_dir / "spm.src.model").exists() and not list((tmp_path / "cache").glob("spm-*"))
    assert "Training a joint SentencePiece" not in (run_dir / "train.log").read_text()
    assert load_trained(run_dir / "best.pt").tokenizer.state_dict() == initial.tokenizer
    # It starts from a model that knows the toy corpus: a fresh one is nowhere near after 3 steps.
    assert summary["best_dev_bleu"] >= 90
    fresh = make_toy_config(tmp_path, {"train": config["data"]["train"], "dev": None})
    fresh["train"].update(run_dir=str(tmp_path / "fresh"), max_steps=1)
    train(config_from_dict(fresh))
    assert first_loss(run_dir) < first_loss(tmp_path / "fresh") / 10


def test_fine_tuning_gets_a_new_optimizer_and_schedule(tmp_path: Path, toy_model):
    """Even from a last.pt that holds an optimizer at step 80, the step counters and the warm-up start at 0."""
    last = toy_model["run_dir"] / "last.pt"
    assert torch.load(last, weights_only=True)["training_state"]["step"] == toy_model["summary"]["steps"]
    config = finetune_config(tmp_path, last)
    config["train"]["schedule"] = {"type": "inverse_sqrt", "warmup_steps": 10}
    summary = train(config_from_dict(config))
    assert summary["steps"] == 3 and summary["init_from"]["step"] == toy_model["summary"]["steps"]
    payload = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert payload["step"] == 3 and payload["training_state"]["step"] == 3
    assert {int(state["step"]) for state in payload["optimizer"]["state"].values()} == {3}
    schedule = LearningRateSchedule(config_from_dict(config).train.schedule, 0.01, 3)
    lrs = [p["lr"] for p in read_records(tmp_path / "ft" / "progress.jsonl")]
    assert lrs == [schedule.lr(step) for step in (1, 2, 3)] and lrs[0] == pytest.approx(0.001)


def test_the_run_records_the_checkpoint_it_started_from(tmp_path: Path, toy_model):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    config = finetune_config(tmp_path, checkpoint)
    summary = train(config_from_dict(config))
    record = expected_record(toy_model, checkpoint)
    assert summary["init_from"] == record
    run_dir = tmp_path / "ft"
    assert json.loads((run_dir / "summary.json").read_text())["init_from"] == record
    for name in ("best.pt", "last.pt", "step-0000003.pt"):
        assert torch.load(run_dir / name, weights_only=True)["run"]["init_from"] == record, name
    # A run that fine-tunes nothing says so.
    assert toy_model["summary"]["init_from"] is None
    assert "init_from" not in torch.load(toy_model["checkpoint"], weights_only=True)["run"]


def test_cli_init_from_fine_tunes_and_the_runs_config_resumes_it(tmp_path: Path, toy_model):
    """--init-from is written to the run's config.yaml, which resumes the run without the checkpoint."""
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    config = make_toy_config(tmp_path, write_toy_corpus(tmp_path))
    config["train"].update(max_steps=2, validate_every=2)
    assert main(["train", write_config(tmp_path, config), "--init-from", str(checkpoint)]) == 0
    run_dir = Path(config["train"]["run_dir"])
    assert load_config(run_dir / "config.yaml").train.init_from == str(checkpoint)
    record = expected_record(toy_model, checkpoint)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["init_from"] == record and summary["best_dev_bleu"] >= 90
    checkpoint.unlink()  # resuming reads last.pt, not the checkpoint the run started from
    assert main(["train", str(run_dir / "config.yaml"), "--resume", "--set", "train.max_steps=4"]) == 0
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["step"] == 4 and last["run"]["init_from"] == record
    assert json.loads((run_dir / "summary.json").read_text())["init_from"] == record


def test_resume_of_a_fine_tuning_run_equals_an_uninterrupted_one(tmp_path: Path, toy_model):
    """Dropout 0.3 (the checkpoint's is 0) may differ: it changes no weight."""
    corpus = write_toy_corpus(tmp_path)
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    record = expected_record(toy_model, checkpoint)

    def config(run: str, max_steps: int):
        data = regularised_toy_config(tmp_path, corpus, run, max_steps)
        data["train"].update(init_from=str(checkpoint), batch_tokens=40)  # several batches an epoch
        return config_from_dict(data)

    assert config("whole", 6).model.dropout != toy_model["config"]["model"]["dropout"]
    train(config("whole", 6))
    first_half = train(config("halves", 3))
    assert first_half["epochs"] % 1 != 0, "the break should fall inside an epoch"
    resumed = train(config("halves", 6), resume=True)
    assert resumed["steps"] == 6 and resumed["init_from"] == record
    runs = tmp_path / "whole", tmp_path / "halves"
    losses = [[p["train_loss"] for p in read_records(run / "progress.jsonl")] for run in runs]
    assert len(losses[0]) == 6 and losses[1] == losses[0]
    whole, halves = (torch.load(run / "last.pt", weights_only=True) for run in runs)
    assert_same_weights(whole["model"], halves["model"])
    assert halves["run"]["init_from"] == whole["run"]["init_from"] == record


# --- a checkpoint that does not fit: one line, exit status 2 -------------------------------------------


def write_mismatch(tmp_path: Path, checkpoint: Path, case: str) -> tuple[str, list[str]]:
    """The config file and extra CLI arguments of each refused case."""
    config = finetune_config(tmp_path, checkpoint, max_steps=2)
    del config["train"]["init_from"]
    flag = ["--init-from", str(checkpoint)]
    if case == "decoder_hidden_size":
        config["model"]["decoder_hidden_size"] = 128
    elif case == "two_sizes":
        config["model"].update(embedding_size=16, decoder_hidden_size=128)
    elif case == "attention":
        config["model"]["attention"] = {"type": "dot"}
    elif case == "languages":
        config["data"].update(src_lang="en", tgt_lang="es")
        config["train"]["init_from"] = str(checkpoint)  # the config key instead of the flag
        flag = []
    elif case == "sampling":
        config["tokenizer"] = {"model_type": "bpe", "sampling": {"alpha": 0.1}}
    return write_config(tmp_path, config), flag


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        (
            "decoder_hidden_size",
            (
                "train.init_from: model.decoder_hidden_size is 64 in {ckpt} but 128 in this config: fine-tuning keeps the "
                "model; copy the checkpoint's model section (`seq2seq info {ckpt}` shows it)"
            ),
        ),
        ("two_sizes", "train.init_from: model.embedding_size is 32 in {ckpt} but 16 in this config: "),
        ("attention", "train.init_from: model.attention.type is 'additive' in {ckpt} but 'dot' in this config: "),
        (
            "languages",
            (
                "train.init_from: {ckpt} translates es->en, this config en->es: fine-tuning keeps the languages "
                "(data.src_lang)"
            ),
        ),
        (
            "sampling",
            (
                "train.init_from: the SentencePiece model of {ckpt} is a word model, which has one segmentation only: "
                "tokenizer.sampling needs a unigram or bpe model; remove tokenizer.sampling"
            ),
        ),
    ],
    ids=["decoder_hidden_size", "two_sizes", "attention", "languages", "sampling"],
)
def test_a_checkpoint_that_does_not_fit_the_config_is_one_line(tmp_path: Path, toy_model, case: str, message: str):
    checkpoint = checkpoint_copy(toy_model, tmp_path)
    config, flag = write_mismatch(tmp_path, checkpoint, case)
    error = assert_subprocess_one_line_error(run_seq2seq("train", config, *flag, cwd=tmp_path))
    assert error.startswith("seq2seq: error: " + message.format(ckpt=checkpoint))
    assert not (tmp_path / "ft" / "last.pt").exists()


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "word", "char"])
def test_sampling_needs_a_checkpoint_whose_own_model_can_sample(tmp_path: Path, toy_model, model_type: str):
    """tokenizer.sampling segments with the checkpoint's SentencePiece model, whatever the tokenizer section says."""
    payload = torch.load(toy_model["checkpoint"], weights_only=True)
    src, tgt = toy_pairs(30)
    model = train_sentencepiece(src + tgt, TokenizerConfig(vocab_size=TOY_VOCAB, model_type=model_type), seed=1)
    payload["tokenizer"] = Tokenizer(model, model).state_dict()
    checkpoint = tmp_path / "best.pt"
    torch.save(payload, checkpoint)
    config = finetune_config(tmp_path, checkpoint)
    config["tokenizer"] = {"model_type": "bpe", "sampling": {"alpha": 0.1}}  # the section's type is not what counts
    parsed = config_from_dict(config)
    if model_type in ("unigram", "bpe"):
        assert read_initial_weights(parsed).tokenizer == payload["tokenizer"]
        return
    with pytest.raises(UserError) as error:
        read_initial_weights(parsed)
    assert str(error.value) == (
        f"train.init_from: the SentencePiece model of {checkpoint} is a {model_type} model, which has one segmentation "
        "only: tokenizer.sampling needs a unigram or bpe model; remove tokenizer.sampling"
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "garbage"])
def test_a_missing_or_unreadable_checkpoint_is_one_line_naming_the_key(tmp_path: Path, kind: str):
    checkpoint = tmp_path / "nowhere.pt" if kind == "missing" else random_bytes(tmp_path)
    config = finetune_config(tmp_path, checkpoint, max_steps=2)
    error = assert_subprocess_one_line_error(run_seq2seq("train", write_config(tmp_path, config), cwd=tmp_path))
    if kind == "missing":
        assert error == f"seq2seq: error: train.init_from: checkpoint not found: {checkpoint}"
    else:
        assert re.fullmatch(
            rf"seq2seq: error: train\.init_from: {re.escape(str(checkpoint))} {NOT_A_CHECKPOINT}", error
        )
