"""Subword regularisation: a new segmentation of every training pair in every epoch, reproducibly.

Two algorithms, as SentencePiece defines them, implemented here so that each draw is seeded by
(run seed, epoch, pair) alone (SentencePiece's own sampler ignores re-seeding in some versions and
draws differently in every new process in others, which would break exact resume):
- unigram models: a segmentation drawn from the lattice of every segmentation with probability
  proportional to exp(alpha x its score) (forward filtering, backward sampling; Kudo 2018), or from
  the n best ones when `nbest` >= 2;
- BPE models: BPE-dropout (Provilkov et al. 2020): at each merge step every applicable merge is left
  out with probability alpha, and the best remaining one is applied.
Both segment the normalized text the cached (deterministic) pieces spell, so normalization stays
SentencePiece's; a side holding an unknown piece keeps its deterministic segmentation. Dev, test
and decoding never sample.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from seq2seq.config import SamplingConfig
from seq2seq.tokenizer import UNK_ID, Tokenizer

ESTIMATE_PAIRS = 1000  # pairs segmented at the start to estimate how much longer sampled segmentations are
UNKNOWN_PENALTY = 10.0  # an unknown character's score: the lowest piece score minus this (as SentencePiece)
WORD_START = "\u2581"  # SentencePiece's whitespace mark

Ids = Sequence[int] | np.ndarray  # piece ids of one sentence (the cache gives int32 arrays)


class PieceTable:
    """The pieces a segmentation may use (not the special ones), with their ids and scores."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self.processor = processor
        self.ids: dict[str, int] = {}
        self.scores: list[float] = [0.0] * processor.get_piece_size()
        for piece_id in range(processor.get_piece_size()):
            if processor.is_unknown(piece_id) or processor.is_control(piece_id) or processor.is_unused(piece_id):
                continue
            self.ids[processor.id_to_piece(piece_id)] = piece_id
            self.scores[piece_id] = processor.get_score(piece_id)
        self.longest = max((len(piece) for piece in self.ids), default=1)
        self.unknown_score = min((self.scores[i] for i in self.ids.values()), default=0.0) - UNKNOWN_PENALTY

    def text(self, ids: Ids) -> str | None:
        """The normalized text that piece ids spell, or None if one of them is unknown (its text is lost)."""
        if any(int(i) == UNK_ID for i in ids):
            return None
        return "".join(self.processor.id_to_piece(int(i)) for i in ids)


def sample_unigram(text: str, table: PieceTable, alpha: float, rng: random.Random) -> list[int]:
    """A segmentation of normalized `text` drawn with probability proportional to exp(alpha x its score)."""
    length = len(text)
    incoming: list[list[tuple[int, int, float]]] = [[] for _ in range(length + 1)]  # per end: (start, id, weight)
    for start in range(length):
        single = False
        for end in range(start + 1, min(length, start + table.longest) + 1):
            piece_id = table.ids.get(text[start:end])
            if piece_id is not None:
                incoming[end].append((start, piece_id, alpha * table.scores[piece_id]))
                single = single or end == start + 1
        if not single:  # an unknown character gets its own piece, as in SentencePiece's lattice
            incoming[start + 1].append((start, UNK_ID, alpha * table.unknown_score))
    forward = [0.0] + [-math.inf] * length  # log of the summed weight of all segmentations of text[:i]
    for end in range(1, length + 1):
        forward[end] = _log_sum_exp([forward[start] + weight for start, _, weight in incoming[end]])
    pieces, end = [], length
    while end > 0:
        edges = incoming[end]
        chosen = _draw([forward[start] + weight for start, _, weight in edges], rng)
        end, piece_id = edges[chosen][0], edges[chosen][1]
        pieces.append(piece_id)
    return pieces[::-1]


def sample_nbest(text: str, table: PieceTable, alpha: float, nbest: int, rng: random.Random) -> list[int]:
    """One of the `nbest` best segmentations of normalized `text`, drawn in proportion to exp(alpha x score)."""
    plain = text.replace(WORD_START, " ").strip()
    candidates = table.processor.nbest_encode(plain, nbest_size=nbest)
    weights = [alpha * sum(table.scores[i] for i in candidate) for candidate in candidates]
    return list(candidates[_draw(weights, rng)]) if candidates else []


def bpe_dropout(text: str, table: PieceTable, dropout: float, rng: random.Random) -> list[int]:
    """BPE on normalized `text`, each applicable merge left out with probability `dropout` at every step."""
    pieces: list[int] = []
    for word in _words(text):
        symbols = list(word)
        while True:
            best, best_score = -1, -math.inf
            for i in range(len(symbols) - 1):
                piece_id = table.ids.get(symbols[i] + symbols[i + 1])
                if piece_id is not None and table.scores[piece_id] > best_score and rng.random() >= dropout:
                    best, best_score = i, table.scores[piece_id]
            if best < 0:
                break
            symbols[best : best + 2] = [symbols[best] + symbols[best + 1]]
        pieces.extend(table.ids.get(symbol, UNK_ID) for symbol in symbols)
    return pieces


def _words(text: str) -> list[str]:
    """Normalized text cut before each whitespace mark: no piece spans two of these."""
    words, start = [], 0
    for index in range(1, len(text)):
        if text[index] == WORD_START:
            words.append(text[start:index])
            start = index
    return [*words, text[start:]] if text else []


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _draw(log_weights: list[float], rng: random.Random) -> int:
    """An index drawn with probability proportional to exp(log_weights)."""
    top = max(log_weights)
    weights = [math.exp(w - top) for w in log_weights]
    threshold, total = rng.random() * sum(weights), 0.0
    for index, weight in enumerate(weights):
        total += weight
        if total > threshold:
            return index
    return len(weights) - 1


class SubwordSampler:
    """Segments training pairs anew each epoch; a draw longer than the length limits falls back to the cached one."""

    def __init__(self, tokenizer: Tokenizer, sampling: SamplingConfig, seed: int, limits: tuple[int, int]):
        self.sampling, self.seed = sampling, seed
        self.model_type = tokenizer.model_type  # the model's own: a fine-tuned run's may differ from its config's
        self.max_src, self.max_tgt = limits
        self.src_table = PieceTable(tokenizer.src)
        self.tgt_table = self.src_table if tokenizer.joint else PieceTable(tokenizer.tgt)

    def draw_seed(self, epoch: int, index: int) -> int:
        """The seed of pair `index`'s segmentation in `epoch`: a hash, so nearby pairs get unrelated draws."""
        digest = hashlib.blake2b(f"{self.seed}:{epoch}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def segment(self, ids: tuple[Ids, Ids], epoch: int, index: int) -> tuple[list[int], list[int]] | None:
        """A sampled segmentation (source ids, target ids) of the pair whose cached ids are `ids`, drawn for pair
        `index` in `epoch`; None when a side would exceed data.max_*_length (the caller keeps the cached one)."""
        rng = random.Random(self.draw_seed(epoch, index))
        src = self._sample(self.src_table, ids[0], rng)
        tgt = self._sample(self.tgt_table, ids[1], rng)
        if len(src) + 1 > self.max_src or len(tgt) + 1 > self.max_tgt or not src or not tgt:  # +1: the EOS
            return None
        return src, tgt

    def _sample(self, table: PieceTable, ids: Ids, rng: random.Random) -> list[int]:
        text = table.text(ids)
        if text is None:
            return [int(i) for i in ids]
        alpha = self.sampling.alpha
        if self.model_type == "bpe":
            return bpe_dropout(text, table, alpha, rng)
        if self.sampling.nbest >= 2:
            return sample_nbest(text, table, alpha, self.sampling.nbest, rng)
        return sample_unigram(text, table, alpha, rng)

    def length_factors(self, pairs: Sequence[tuple[Ids, Ids]]) -> tuple[float, float]:
        """How many times longer sampled segmentations are than the cached `pairs` (source, target); at least 1."""
        sampled, cached = np.zeros(2), np.zeros(2)
        for index, pair in enumerate(pairs):
            segments = self.segment(pair, epoch=-1, index=index)
            chosen = segments if segments is not None else pair
            sampled += [len(chosen[0]), len(chosen[1])]
            cached += [len(pair[0]), len(pair[1])]
        src_factor, tgt_factor = np.maximum(sampled / np.maximum(cached, 1.0), 1.0)
        return float(src_factor), float(tgt_factor)


def expected_lengths(lengths: np.ndarray, factor: float, limit: int) -> np.ndarray:
    """Lengths scaled by a sampling factor (rounded up), never above what the fallback guarantees (limit - 1)."""
    return np.minimum(np.ceil(lengths * factor), limit - 1).astype(np.int64)
