"""Decoding: greedy search, batched over sentences, with the attention of every output piece."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Hypothesis:
    """One output: piece ids (without EOS), total log-probability, attention [len(ids) + 1, S]."""

    ids: list[int]
    score: float
    attention: Tensor  # one row per output piece and the final EOS; one column per source piece


def max_output_lengths(src_lengths: Tensor, ratio: float) -> Tensor:
    """The longest output allowed for each source length (pieces, EOS included)."""
    return (src_lengths.float() * ratio).long() + 5


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_output_ratio: float = 1.5) -> list[Hypothesis]:
    """Most probable piece at each step, for a batch of source ids [B, S] (EOS-terminated)."""
    src_mask = src != PAD_ID
    memory, state = model.encode(src, src_lengths, src_mask)
    batch = src.size(0)
    limits = max_output_lengths(src_lengths, max_output_ratio).to(src.device)  # [B]
    previous = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    scores = torch.zeros(batch, device=src.device)
    tokens, weights = [], []
    for step in range(int(limits.max())):
        attentional, state, step_weights = model.decoder(previous, state, memory)  # [B, 1, H], _, [B, 1, S]
        log_probs = torch.log_softmax(model.decoder.logits(attentional[:, 0]).float(), dim=-1)  # [B, V]
        log_probs[:, PAD_ID] = float("-inf")
        out_of_room = limits == step + 1  # the last allowed position must hold EOS
        log_probs[out_of_room] = torch.where(
            torch.arange(log_probs.size(1), device=src.device) == EOS_ID, 0.0, float("-inf")
        )
        best_score, best = log_probs.max(dim=-1)  # [B]
        best = best.masked_fill(finished, PAD_ID)
        scores += best_score.masked_fill(finished, 0.0)
        tokens.append(best)
        weights.append(step_weights[:, 0])
        finished |= best == EOS_ID
        if bool(finished.all()):
            break
        previous = best[:, None]
    token_matrix = torch.stack(tokens, dim=1).cpu()  # [B, T]
    weight_matrix = torch.stack(weights, dim=1).float().cpu()  # [B, T, S]
    return [
        _hypothesis(token_matrix[i], float(scores[i]), weight_matrix[i, :, : int(src_lengths[i])])
        for i in range(batch)
    ]


def _hypothesis(tokens: Tensor, score: float, attention: Tensor) -> Hypothesis:
    ids = tokens.tolist()
    length = ids.index(EOS_ID) if EOS_ID in ids else len(ids)
    return Hypothesis(ids[:length], score, attention[: length + 1])


def decode_lines(
    model: Seq2Seq,
    tokenizer,
    lines: list[str],
    device: torch.device,
    batch_tokens: int = 4000,
    max_output_ratio: float = 1.5,
    max_src_length: int | None = None,
    progress=None,
) -> list[Hypothesis]:
    """Greedy translations of `lines`, batched by length; an empty line gives an empty hypothesis.

    `max_src_length` truncates longer sources (in pieces); `progress` is an optional tqdm bar.
    """
    encoded = tokenizer.encode_src(lines)
    if max_src_length is not None:
        encoded = [ids[: max_src_length - 1] for ids in encoded]
    results: list[Hypothesis | None] = [None] * len(lines)
    order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
    for batch in _length_batches(order, encoded, batch_tokens):
        sources = [torch.tensor(encoded[i] + [EOS_ID]) for i in batch]
        src = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD_ID).to(device)
        src_lengths = torch.tensor([len(s) for s in sources])
        for index, hypothesis in zip(batch, greedy_search(model, src, src_lengths.to(device), max_output_ratio)):
            results[index] = hypothesis
        if progress is not None:
            progress.update(len(batch))
    empty = Hypothesis([], 0.0, torch.zeros(1, 0))
    return [result if result is not None else empty for result in results]


def _length_batches(order: list[int], encoded: list[list[int]], batch_tokens: int) -> list[list[int]]:
    """Cut indices sorted by length into batches of at most `batch_tokens` padded source tokens."""
    batches, batch = [], []
    for index in order:
        width = len(encoded[index]) + 1
        if batch and width * (len(batch) + 1) > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches
