"""Validation: the dev set, its loss, perplexity and greedy BLEU, the best score so far and patience."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from seq2seq.checkpoint import TrainingState
from seq2seq.config import Config, DecodeConfig
from seq2seq.data import Batch, EncodedCorpus, ParallelDataset, TokenBucketSampler, collate, read_parallel
from seq2seq.metrics import bleu
from seq2seq.model import Seq2Seq, sequence_loss
from seq2seq.search import attention_view, decode_lines
from seq2seq.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class DevSet:
    """Dev sources and references as raw lines, and the non-empty pairs as batches for the dev loss."""

    src: list[str]
    ref: list[str]
    batches: list[Batch]


def make_dev_set(src: list[str], ref: list[str], tokenizer: Tokenizer, batch_tokens: int) -> DevSet:
    """Dev lines plus teacher-forcing batches of their non-empty pairs."""
    pairs = [(s, t) for s, t in zip(src, ref) if s.strip() and t.strip()]
    corpus = EncodedCorpus.from_lists(
        tokenizer.encode_src([s for s, _ in pairs]), tokenizer.encode_tgt([t for _, t in pairs])
    )
    dataset = ParallelDataset(corpus)
    longest = 1 + int(max(corpus.src_lengths.max(initial=0), corpus.tgt_lengths.max(initial=0)))
    sampler = TokenBucketSampler(corpus.src_lengths, corpus.tgt_lengths, max(batch_tokens, longest), shuffle=False)
    return DevSet(src, ref, [collate([dataset[i] for i in indices]) for indices in sampler])


def load_dev_set(config: Config, tokenizer: Tokenizer) -> DevSet | None:
    """The config's dev set (cut to train.validate_max_sentences), or None without one."""
    data = config.data
    if not data.dev:
        return None
    src, ref, _ = read_parallel(data.dev, data.src_lang, data.tgt_lang)
    limit = config.train.validate_max_sentences
    dev = make_dev_set(src[:limit], ref[:limit], tokenizer, config.train.batch_tokens)
    log.info("Dev set: %s, %d pairs", data.dev, len(dev.src))
    return dev


def example_sentences(dev: DevSet | None, tokenizer: Tokenizer, count: int) -> list[tuple[int, list[int]]]:
    """The first `count` dev sentences of 5 to 40 pieces, with their piece ids: whose attention to show."""
    if dev is None or count == 0:
        return []
    chosen = []
    for index, ids in enumerate(tokenizer.encode_src(dev.src)):
        if 5 <= len(ids) <= 40 and dev.ref[index].strip():
            chosen.append((index, ids))
            if len(chosen) == count:
                break
    return chosen


class Validator:
    """Scores a model on the dev set and keeps the best BLEU and the patience count in the training state.

    After each validation, `examples` holds the attention of a few fixed dev sentences (source pieces,
    output pieces, weights [out, src]) when `example_count` asked for them.
    """

    def __init__(
        self,
        dev: DevSet | None,
        tokenizer: Tokenizer,
        device: torch.device,
        decode: DecodeConfig,
        early_stopping_patience: int | None,
        example_count: int = 0,
    ):
        self.dev, self.tokenizer, self.device = dev, tokenizer, device
        self.decode, self.patience = decode, early_stopping_patience
        self.example_sentences = example_sentences(dev, tokenizer, example_count)
        self.examples: list[tuple[list[str], list[str], torch.Tensor]] = []

    def validate(self, model: Seq2Seq, state: TrainingState) -> tuple[dict[str, Any], bool]:
        """The validation record (dev loss, perplexity, greedy BLEU) and whether BLEU improved; updates `state`."""
        model.eval()
        record: dict[str, Any] = {"step": state.step, "epoch": state.epoch + 1}
        if self.dev is None:  # without a dev set every checkpoint is the best one
            record["minutes"] = round(state.elapsed / 60, 3)
            return record, True
        record["dev_loss"] = self._dev_loss(model, self.dev)
        record["dev_ppl"] = math.exp(min(record["dev_loss"], 50.0))
        started = time.monotonic()
        hypotheses = decode_lines(model, self.tokenizer, self.dev.src, self.device, self.decode)
        texts = [self.tokenizer.decode_tgt(best[0].ids) for best in hypotheses]
        self.examples = [attention_view(self.tokenizer, ids, hypotheses[i][0]) for i, ids in self.example_sentences]
        score = bleu(texts, self.dev.ref)
        record.update(dev_bleu=round(score.value, 2), decode_seconds=round(time.monotonic() - started, 1))
        record["minutes"] = round(state.elapsed / 60, 3)
        improved = record["dev_bleu"] > state.best_bleu
        if improved:
            state.best_bleu, state.best_step = record["dev_bleu"], state.step
            state.validations_without_improvement = 0
        else:
            state.validations_without_improvement += 1
        log.info(
            "Validation at step %d (epoch %d, %.1f min): dev loss %.3f, ppl %.1f, BLEU %.2f%s",
            state.step,
            state.epoch + 1,
            record["minutes"],
            record["dev_loss"],
            record["dev_ppl"],
            record["dev_bleu"],
            " (new best)" if improved else f" (best {state.best_bleu:.2f} at step {state.best_step})",
        )
        return record, improved

    def early_stop(self, state: TrainingState) -> str | None:
        """A reason to stop when dev BLEU has not improved for train.early_stopping_patience validations."""
        if self.patience is not None and state.validations_without_improvement >= self.patience:
            return f"early stopping: dev BLEU did not improve for {self.patience} validations"
        return None

    @torch.no_grad()
    def _dev_loss(self, model: Seq2Seq, dev: DevSet) -> float:
        """Mean cross-entropy per target token on the dev pairs (no label smoothing)."""
        total, tokens = 0.0, 0
        for batch in dev.batches:
            count = batch.num_tgt_tokens
            total += sequence_loss(model, batch.to(self.device)).item() * count
            tokens += count
        return total / max(tokens, 1)
