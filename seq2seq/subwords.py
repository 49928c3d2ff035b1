"""Subword regularisation: a new segmentation of every training pair in every epoch, reproducibly.

SentencePiece samples a segmentation from its unigram lattice (Kudo 2018), or drops BPE merges at
random (BPE-dropout, Provilkov et al. 2020). Each draw is seeded by (run seed, epoch, pair), so
the segmentation of a pair depends on nothing else: not the batch, not the worker process that
encodes it, not whether the run was resumed. Dev, test and decoding never sample.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from seq2seq.config import SamplingConfig
from seq2seq.tokenizer import Tokenizer

ESTIMATE_PAIRS = 1000  # pairs segmented at the start to estimate how much longer sampled segmentations are


class SubwordSampler:
    """Segments training pairs anew each epoch; a draw longer than the length limits falls back to the cached one."""

    def __init__(self, tokenizer: Tokenizer, sampling: SamplingConfig, seed: int, max_src: int, max_tgt: int):
        self.tokenizer, self.sampling, self.seed = tokenizer, sampling, seed
        self.max_src, self.max_tgt = max_src, max_tgt

    def draw_seed(self, epoch: int, index: int) -> int:
        """The seed of pair `index`'s segmentation in `epoch`: a hash, so nearby pairs get unrelated draws."""
        digest = hashlib.blake2b(f"{self.seed}:{epoch}:{index}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little")

    def segment(self, texts: tuple[str, str], epoch: int, index: int) -> tuple[list[int], list[int]] | None:
        """A sampled segmentation (source ids, target ids) of pair `index` in `epoch`, or None when a side would
        exceed data.max_*_length (the caller then keeps the deterministic one)."""
        spm.set_random_generator_seed(self.draw_seed(epoch, index))
        src = self._sample(self.tokenizer.src, texts[0])
        tgt = self._sample(self.tokenizer.tgt, texts[1])
        if len(src) + 1 > self.max_src or len(tgt) + 1 > self.max_tgt or not src or not tgt:  # +1: the EOS
            return None
        return src, tgt

    def _sample(self, processor: spm.SentencePieceProcessor, text: str) -> list[int]:
        return processor.encode(text, enable_sampling=True, alpha=self.sampling.alpha, nbest_size=self.sampling.nbest)

    def length_factors(
        self, texts: Sequence[tuple[str, str]], lengths: Sequence[tuple[int, int]]
    ) -> tuple[float, float]:
        """How many times longer sampled segmentations are than the deterministic ones (source, target),
        measured on `texts` whose deterministic lengths are `lengths`; at least 1."""
        sampled = np.zeros(2)
        for index, pair in enumerate(texts):
            segments = self.segment(pair, epoch=-1, index=index)
            sampled += [len(segments[0]), len(segments[1])] if segments else lengths[index]
        deterministic = np.maximum(np.sum(lengths, axis=0, dtype=np.float64), 1.0)
        src_factor, tgt_factor = np.maximum(sampled / deterministic, 1.0)
        return float(src_factor), float(tgt_factor)


def expected_lengths(lengths: np.ndarray, factor: float, limit: int) -> np.ndarray:
    """Lengths scaled by a sampling factor (rounded up), never above what the fallback guarantees (limit - 1)."""
    return np.minimum(np.ceil(lengths * factor), limit - 1).astype(np.int64) if math.isfinite(factor) else lengths
