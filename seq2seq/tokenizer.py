"""SentencePiece subword models: trained on the training split only, carried as bytes.

The model bytes are stored in the run directory and inside every checkpoint, so a checkpoint
alone can tokenize and detokenize.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from seq2seq.cache import cached_entry
from seq2seq.config import TokenizerConfig
from seq2seq.errors import UserError
from seq2seq.textfiles import sample_lines

log = logging.getLogger(__name__)

# The same special ids as Joey NMT, so one SentencePiece model serves both toolkits.
UNK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Source and target SentencePiece processors (the same one when the vocabulary is joint)."""

    def __init__(self, src_model: bytes, tgt_model: bytes):
        self.src_model, self.tgt_model = src_model, tgt_model
        self.src = _processor(src_model)
        self.tgt = self.src if tgt_model == src_model else _processor(tgt_model)

    @property
    def joint(self) -> bool:
        return self.src_model == self.tgt_model

    @property
    def model_type(self) -> str:
        """What the (source) SentencePiece model was trained as: unigram, bpe, word or char."""
        return model_type(self.src_model)

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        """Piece ids of each source line (no BOS/EOS)."""
        return self.src.encode(list(lines))

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        """Piece ids of each target line (no BOS/EOS)."""
        return self.tgt.encode(list(lines))

    def decode_tgt(self, ids: Sequence[int]) -> str:
        """Detokenized target text for piece ids (special ids are dropped)."""
        return self.tgt.decode([i for i in ids if i > EOS_ID])

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        """Readable source pieces, for attention displays."""
        return [self.src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        """Readable target pieces, for attention displays."""
        return [self.tgt.id_to_piece(i) for i in ids]

    def state_dict(self) -> dict:
        """Plain values for a checkpoint."""
        return {"src_model": self.src_model, "tgt_model": self.tgt_model}

    @classmethod
    def from_state_dict(cls, state: dict) -> Tokenizer:
        """Rebuild from `state_dict()` output."""
        return cls(state["src_model"], state["tgt_model"])


MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # SentencePiece's TrainerSpec.ModelType


def model_type(model: bytes) -> str:
    """The model type stored in a SentencePiece model's bytes (ModelProto.trainer_spec.model_type).

    Read straight from the protobuf wire format: field 2 of the model is the trainer spec, field 3
    of that the type (absent: unigram, protobuf's default).
    """
    trainer_spec = _protobuf_field(model, 2)
    value = _protobuf_field(trainer_spec, 3) if isinstance(trainer_spec, bytes) else None
    return MODEL_TYPES.get(value if isinstance(value, int) else 1, "unigram")


def _protobuf_field(message: bytes, wanted: int) -> bytes | int | None:
    """The first value of field `wanted` in a serialized protobuf message (bytes or an integer), or None."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(message, position)
            if field == wanted:
                return value
        elif wire_type == 2:
            size, position = _varint(message, position)
            if field == wanted:
                return message[position : position + size]
            position += size
        elif wire_type in (1, 5):
            position += 8 if wire_type == 1 else 4
        else:
            return None  # groups: not used by SentencePiece
    return None


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(data):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return value, position


def _processor(model: bytes) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError) as exc:
        raise UserError(f"not a usable SentencePiece model ({exc})") from None


def train_sentencepiece(
    lines: Iterable[str], config: TokenizerConfig, seed: int, source: str = "the training corpus"
) -> bytes:
    """Train one SentencePiece model on `lines` (read from `source`, named in errors) and return its bytes."""
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UserError(f"{source} hold(s) no non-empty lines: nothing to train SentencePiece on")
    if len(lines) > config.input_sentence_size:  # sample ourselves: deterministic for a seed
        lines = random.Random(seed).sample(lines, config.input_sentence_size)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            character_coverage=config.character_coverage,
            unk_id=UNK_ID,
            pad_id=PAD_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as exc:
        message = str(exc)
        if "smaller than required_chars" in message:
            raise UserError(
                f"tokenizer.vocab_size {config.vocab_size} is too small for this corpus's characters: raise "
                "tokenizer.vocab_size or lower tokenizer.character_coverage"
            ) from None
        if "Vocabulary size" in message or "vocab_size" in message:
            raise UserError(
                f"tokenizer.vocab_size {config.vocab_size} is too large for this corpus "
                f"(SentencePiece says: {message.strip().splitlines()[-1]}): lower tokenizer.vocab_size"
            ) from None
        raise UserError(f"SentencePiece training failed: {message.strip().splitlines()[-1]}") from None
    return model.getvalue()


def _cache_key(digests: Sequence[str], config: TokenizerConfig, seed: int) -> str:
    settings = sorted((k, v) for k, v in vars(config).items() if k != "sampling")  # sampling: no new model
    text = repr((tuple(digests), settings, seed, UNK_ID, PAD_ID, BOS_ID, EOS_ID))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cached_model(cache_dir: Path, key: str, lines_source, config: TokenizerConfig, seed: int, names: str) -> bytes:
    def build(directory: Path) -> None:
        (directory / "spm.model").write_bytes(train_sentencepiece(lines_source(), config, seed, names))

    return (cached_entry(cache_dir, f"spm-{key}", build, "SentencePiece model") / "spm.model").read_bytes()


def _model_for(
    paths: Sequence[Path], digests: Sequence[str], config: TokenizerConfig, cache_dir: Path, seed: int
) -> bytes:
    """One SentencePiece model trained on the lines of `paths` (or reused from the cache for the same contents)."""
    limit = config.input_sentence_size
    names = " and ".join(str(p) for p in paths)
    return _cached_model(
        cache_dir, _cache_key(digests, config, seed), lambda: sample_lines(paths, limit, seed), config, seed, names
    )


def build_tokenizer(
    paths: Sequence[tuple[Path, Path]],
    digests: Sequence[tuple[str, str]],
    config: TokenizerConfig,
    cache_dir: Path,
    seed: int,
) -> Tokenizer:
    """Train (or reuse from the cache) the SentencePiece model(s) on the training corpora's (source, target) files."""
    src_paths, tgt_paths = [p[0] for p in paths], [p[1] for p in paths]
    src_digests, tgt_digests = [d[0] for d in digests], [d[1] for d in digests]
    if config.joint:
        log.info("Training a joint SentencePiece %s model, vocabulary %d", config.model_type, config.vocab_size)
        model = _model_for(src_paths + tgt_paths, src_digests + tgt_digests, config, cache_dir, seed)
        return Tokenizer(model, model)
    log.info("Training source and target SentencePiece models, vocabulary %d each", config.vocab_size)
    src_model = _model_for(src_paths, src_digests, config, cache_dir, seed)
    tgt_model = _model_for(tgt_paths, tgt_digests, config, cache_dir, seed)
    return Tokenizer(src_model, tgt_model)
