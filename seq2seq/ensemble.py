"""Several models decoding as one: the search's view of "the model".

The searches in seq2seq/search.py ask an `Ensemble` to start on a batch of sources and then,
step by step, for the log-probabilities of the next piece. With one model that is the model
itself; with several, each model's log-probabilities are combined with weights that sum to 1 and
normalised again (a log-linear ensemble: a weighted geometric mean of the models' distributions),
and the attention shown is their weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from seq2seq.checkpoint import Trained, load_trained
from seq2seq.config import Config
from seq2seq.decoder import DecoderState, Memory
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq
from seq2seq.quantize import quantize_for_decoding
from seq2seq.tokenizer import PAD_ID, Tokenizer


@dataclass
class EnsembleState:
    """Each model's attention memory and decoder state, for the rows still being searched."""

    memories: list[Memory]
    states: list[DecoderState]

    def select(self, index: Tensor) -> EnsembleState:
        """Rows `index` of every model's memory and decoder state (the sentences still going)."""
        return self.select_memories(index).select_states(index)

    def select_memories(self, index: Tensor) -> EnsembleState:
        """Rows `index` of the memories only (beam search: the beams of a sentence share one memory)."""
        return EnsembleState([m.select(index) for m in self.memories], self.states)

    def select_states(self, index: Tensor) -> EnsembleState:
        """Rows `index` of the decoder states only (beam search: each new beam continues its parent's state)."""
        return EnsembleState(self.memories, [s.select(index) for s in self.states])


class Ensemble:
    """One or more models of the same vocabularies, decoding together."""

    def __init__(self, models: Sequence[Seq2Seq], weights: Sequence[float] | None = None):
        if not models:
            raise UserError("give at least one checkpoint")
        weights = check_weights(weights, len(models))
        total = sum(weights)
        self.models, self.weights = list(models), [w / total for w in weights]

    def start(self, src: Tensor, src_lengths: Tensor) -> EnsembleState:
        """Encode source ids [B, S] with every model."""
        src_mask = src != PAD_ID
        encoded = [model.encode(src, src_lengths, src_mask) for model in self.models]
        return EnsembleState([memory for memory, _ in encoded], [state for _, state in encoded])

    def step(self, previous: Tensor, state: EnsembleState) -> tuple[Tensor, Tensor, EnsembleState]:
        """Log-probabilities [N, V] of the next piece after pieces `previous` [N, 1], attention [N, S], new state."""
        steps = [
            _model_step(model, previous, memory, decoder_state)
            for model, memory, decoder_state in zip(self.models, state.memories, state.states)
        ]
        states = EnsembleState(state.memories, [new_state for _, _, new_state in steps])
        logits = self._combine([logits for logits, _, _ in steps])
        attention = steps[0][1] if len(steps) == 1 else self._combine([attention for _, attention, _ in steps])
        return torch.log_softmax(logits, dim=-1), attention, states

    def teacher_forced(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Log-probabilities [B, T, V] of every next piece given the target prefix (for scoring)."""
        src_mask, every = src != PAD_ID, torch.ones_like(tgt_in, dtype=torch.bool)
        logits = [model(src, src_lengths, src_mask, tgt_in, every).view(*tgt_in.shape, -1) for model in self.models]
        return torch.log_softmax(self._combine([x.float() for x in logits]), dim=-1)

    def _combine(self, values: list[Tensor]) -> Tensor:
        """The weighted sum of the models' values (a single model's own values, untouched).

        For logits this is enough: normalising sum_i w_i log p_i again gives log_softmax(sum_i w_i z_i),
        since each log p_i is its logits z_i minus a per-row constant; one log-softmax instead of one per model.
        """
        if len(values) == 1:
            return values[0]
        combined = values[0] * self.weights[0]
        for value, weight in zip(values[1:], self.weights[1:]):
            combined.add_(value, alpha=weight)
        return combined


def check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Ensemble weights, one positive finite number per checkpoint (None: equal weights)."""
    if weights is None:
        return [1.0] * count
    if count < 2:
        raise UserError("ensemble weights (--weights) need two or more checkpoints")
    if len(weights) != count:
        raise UserError(f"{len(weights)} ensemble weights (--weights) for {count} checkpoints: give one per checkpoint")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserError(f"ensemble weights (--weights) must be positive finite numbers, got {list(weights)}")
    return list(weights)


def _model_step(
    model: Seq2Seq, previous: Tensor, memory: Memory, state: DecoderState
) -> tuple[Tensor, Tensor, DecoderState]:
    """One model's next-piece logits [N, V] (float32), attention [N, S] and new state."""
    attentional, new_state, weights = model.decoder(previous, state, memory)  # [N, 1, H], _, [N, 1, S]
    return model.decoder.logits(attentional[:, 0]).float(), weights[:, 0], new_state


@dataclass
class LoadedEnsemble:
    """Checkpoints loaded for decoding together: the ensemble, the tokenizer and config they share."""

    ensemble: Ensemble
    tokenizer: Tokenizer
    config: Config  # the first checkpoint's (its decode section gives the decoding defaults)
    steps: list[int | None]
    paths: list[Path] = field(default_factory=list)
    members: list[Trained] = field(default_factory=list)  # each checkpoint as loaded (its record: run, best_bleu)
    parameters: int = 0  # of all the models, counted before any quantization (which packs weights away)


def load_ensemble(
    paths: str | Path | Sequence[str | Path],
    device: str | torch.device = "cpu",
    weights: Sequence[float] | None = None,
    quantize: str = "none",
) -> LoadedEnsemble:
    """Load one or more checkpoints; they must share the SentencePiece models and the languages.

    `quantize` 'int8' quantizes each model for decoding on the CPU (seq2seq/quantize.py; the device must be the CPU).
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise UserError("give at least one checkpoint")
    check_weights(weights, len(paths))  # before the checkpoints are read
    loaded = [load_trained(path, device) for path in paths]
    first = loaded[0]
    for path, trained in zip(paths[1:], loaded[1:]):
        if trained.tokenizer.state_dict() != first.tokenizer.state_dict():
            raise UserError(f"{paths[0]} and {path} have different SentencePiece models: they cannot decode together")
        languages = (trained.config.data.src_lang, trained.config.data.tgt_lang)
        if languages != (first.config.data.src_lang, first.config.data.tgt_lang):
            raise UserError(f"{paths[0]} and {path} translate different languages: they cannot decode together")
    parameters = sum(p.numel() for trained in loaded for p in trained.model.parameters())
    ensemble = Ensemble([quantize_for_decoding(trained.model, quantize) for trained in loaded], weights)
    steps = [trained.step for trained in loaded]
    return LoadedEnsemble(ensemble, first.tokenizer, first.config, steps, [Path(p) for p in paths], loaded, parameters)
