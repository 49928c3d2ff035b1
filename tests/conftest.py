"""Shared fixtures: tiny corpora (real and synthetic), tiny configs, a trained tokenizer, one trained toy model.

Plain helper functions and constants are in helpers.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import (
    DATA,
    TOY_MODEL_STEPS,
    head,
    make_config,
    make_toy_config,
    write_parallel,
    write_toy_corpus,
)

from seq2seq.config import TokenizerConfig
from seq2seq.tokenizer import Tokenizer, train_sentencepiece


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> dict[str, str]:
    """200 real training pairs and 20 dev pairs in tmp_path; returns the data.train / data.dev prefixes."""
    train = write_parallel(tmp_path / "corpus" / "train", head(DATA / "train.es", 200), head(DATA / "train.en", 200))
    dev = write_parallel(tmp_path / "corpus" / "dev", head(DATA / "dev.es", 20), head(DATA / "dev.en", 20))
    return {"train": train, "dev": dev}


@pytest.fixture
def toy_corpus(tmp_path: Path) -> dict[str, str]:
    """30 synthetic word-for-word pairs in tmp_path; dev is the same pairs."""
    return write_toy_corpus(tmp_path)


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_corpus: dict[str, str]) -> dict:
    """Config dict for the tiny real corpus (vocab 300, sizes 32/64), cache and run dir in tmp_path."""
    return make_config(tmp_path, tiny_corpus)


@pytest.fixture
def toy_config(tmp_path: Path, toy_corpus: dict[str, str]) -> dict:
    """Config dict for the toy corpus (3 batches an epoch), run dir and cache in tmp_path."""
    return make_toy_config(tmp_path, toy_corpus)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A joint SentencePiece model (vocab 300) trained on the first 200 training pairs."""
    lines = head(DATA / "train.es", 200) + head(DATA / "train.en", 200)
    model = train_sentencepiece(lines, TokenizerConfig(vocab_size=300), seed=1)
    return Tokenizer(model, model)


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """Undo what the CLI and runs do to the 'seq2seq' logger, so tests do not leak handlers."""
    logger = logging.getLogger("seq2seq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers, logger.level, logger.propagate = saved


# --- one tiny trained model, shared by the search, evaluate, translate, align and CLI tests -------------


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory) -> dict:
    """One run that overfits the toy corpus (dev = train), trained once per session.

    Keeps the step-40 and step-80 checkpoints (for averaging). Returns the run directory, the
    best checkpoint, the dev source/reference files, the config dict and the training summary.
    Tests must not write into the run directory (copy a checkpoint to tmp_path first).
    """
    from seq2seq.config import config_from_dict
    from seq2seq.train import train

    directory = tmp_path_factory.mktemp("toy_model")
    corpus = write_toy_corpus(directory)
    config = make_toy_config(directory, corpus)
    config["train"].update(
        max_steps=TOY_MODEL_STEPS, validate_every=TOY_MODEL_STEPS // 2, log_every=10, keep_checkpoints=2
    )
    summary = train(config_from_dict(config))
    run_dir = Path(config["train"]["run_dir"])
    return {
        "run_dir": run_dir,
        "checkpoint": run_dir / "best.pt",
        "src": Path(f"{corpus['dev']}.es"),
        "ref": Path(f"{corpus['dev']}.en"),
        "config": config,
        "summary": summary,
    }


@pytest.fixture(scope="module")
def translator(toy_model):
    """The toy model with the default decoding options (beam 5)."""
    from seq2seq.translate import Translator

    return Translator(str(toy_model["checkpoint"]), device="cpu")


@pytest.fixture(scope="module")
def corpus(toy_model) -> tuple[list[str], list[str]]:
    """The toy model's dev sources and references (the sentences it memorised)."""
    return toy_model["src"].read_text().splitlines(), toy_model["ref"].read_text().splitlines()
