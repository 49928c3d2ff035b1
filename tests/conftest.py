"""Shared fixtures: tiny corpora (real and synthetic), tiny configs, a trained tokenizer."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from seq2seq.config import TokenizerConfig
from seq2seq.tokenizer import Tokenizer, train_sentencepiece

DATA = Path(__file__).resolve().parent.parent / "data"

# A toy Spanish -> English lexicon: word-for-word translation that a tiny model memorises in seconds.
TOY_ES = "uno dos tres cuatro cinco seis siete ocho nueve diez gato perro casa rojo azul verde grande".split()  # noqa: SIM905
TOY_EN = "one two three four five six seven eight nine ten cat dog house red blue green big".split()  # noqa: SIM905
TOY_VOCAB = len(TOY_ES) + len(TOY_EN) + 4  # one piece per word plus the 4 special pieces


def head(path: Path, count: int) -> list[str]:
    """The first `count` lines of a text file."""
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for _, line in zip(range(count), handle)]


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write lines as a UTF-8 text file, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_parallel(prefix: Path, src: list[str], tgt: list[str]) -> str:
    """Write prefix.es / prefix.en and return the prefix as the config wants it."""
    write_lines(Path(f"{prefix}.es"), src)
    write_lines(Path(f"{prefix}.en"), tgt)
    return str(prefix)


def toy_pairs(count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`count` distinct toy sentence pairs of 3 to 6 words."""
    rng = random.Random(seed)
    sentences: set[tuple[int, ...]] = set()
    while len(sentences) < count:
        sentences.add(tuple(rng.randrange(len(TOY_ES)) for _ in range(rng.randint(3, 6))))
    ordered = sorted(sentences)
    return [" ".join(TOY_ES[i] for i in s) for s in ordered], [" ".join(TOY_EN[i] for i in s) for s in ordered]


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> dict[str, str]:
    """200 real training pairs and 20 dev pairs in tmp_path; returns the data.train / data.dev prefixes."""
    train = write_parallel(tmp_path / "corpus" / "train", head(DATA / "train.es", 200), head(DATA / "train.en", 200))
    dev = write_parallel(tmp_path / "corpus" / "dev", head(DATA / "dev.es", 20), head(DATA / "dev.en", 20))
    return {"train": train, "dev": dev}


def write_toy_corpus(directory: Path, count: int = 30) -> dict[str, str]:
    """`count` synthetic word-for-word pairs; dev is the same pairs (for overfitting)."""
    src, tgt = toy_pairs(count)
    train = write_parallel(directory / "toy" / "train", src, tgt)
    dev = write_parallel(directory / "toy" / "dev", src, tgt)
    return {"train": train, "dev": dev}


@pytest.fixture
def toy_corpus(tmp_path: Path) -> dict[str, str]:
    """30 synthetic word-for-word pairs in tmp_path; dev is the same pairs."""
    return write_toy_corpus(tmp_path)


def make_config(tmp_path: Path, corpus: dict[str, str]) -> dict:
    """A config dict for a tiny, fast run whose files all live under tmp_path."""
    return {
        "name": "tiny",
        "data": {
            "train": corpus["train"],
            "dev": corpus["dev"],
            "test": None,
            "cache_dir": str(tmp_path / "cache"),
        },
        "tokenizer": {"vocab_size": 300},
        "model": {
            "embedding_size": 32,
            "encoder_hidden_size": 32,
            "decoder_hidden_size": 64,
            "dropout": 0.1,
            "attention": {"type": "additive"},
        },
        "train": {
            "run_dir": str(tmp_path / "run"),
            "device": "cpu",
            # One thread: tiny models gain nothing from more, and CPU contention makes more far slower.
            "threads": 1,
            "batch_tokens": 800,
            "max_steps": 4,
            "validate_every": 1000,
            "log_every": 1,
            "keep_checkpoints": 1,
            "schedule": {"type": "constant", "warmup_steps": 0},
        },
    }


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_corpus: dict[str, str]) -> dict:
    """Config dict for the tiny real corpus (vocab 300, sizes 32/64), cache and run dir in tmp_path."""
    return make_config(tmp_path, tiny_corpus)


def make_toy_config(directory: Path, corpus: dict[str, str]) -> dict:
    """Config dict for the toy corpus: a word-level vocabulary, no dropout, a high constant lr."""
    config = make_config(directory, corpus)
    config["tokenizer"] = {"vocab_size": TOY_VOCAB, "model_type": "word"}
    config["model"]["dropout"] = 0.0
    config["train"].update(lr=0.01, label_smoothing=0.0, batch_tokens=100)
    return config


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


# --- one tiny trained model, shared by the search, evaluate and translate tests -----------------

TOY_MODEL_STEPS = 80  # the toy corpus is memorised (dev BLEU about 100) well before this


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
