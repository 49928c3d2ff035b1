"""Decoding: greedy search, batched over sentences, with the attention of every output piece."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    """One output: piece ids (without EOS), its score, attention [len(ids) + 1, S], log-probability.

    `score` ranks hypotheses: the log-probability divided by the length penalty (beam search), or
    the log-probability itself (greedy search).
    """

    ids: list[int]
    score: float
    attention: Tensor  # one row per output piece and the final EOS; one column per source piece
    log_prob: float = 0.0


def max_output_lengths(src_lengths: Tensor, ratio: float) -> Tensor:
    """The longest output allowed for each source length (pieces, EOS included)."""
    return (src_lengths.float() * ratio).long() + 5


def force_eos(log_probs: Tensor, rows: Tensor) -> None:
    """In place: rows out of room [N] may only end (every piece but EOS gets -inf)."""
    eos = log_probs[:, EOS_ID].clone()
    log_probs[rows] = float("-inf")
    log_probs[:, EOS_ID] = eos


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_output_ratio: float = 1.5) -> list[Hypothesis]:
    """Most probable piece at each step, for a batch of source ids [B, S] (EOS-terminated).

    Sentences leave the batch as soon as they end, so the rest decode faster.
    """
    src_mask = src != PAD_ID
    memory, state = model.encode(src, src_lengths, src_mask)
    batch, device = src.size(0), src.device
    limits = max_output_lengths(src_lengths, max_output_ratio).to(device)  # [B]
    alive = torch.arange(batch, device=device)  # [B']: the sentences still being decoded
    previous = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)  # [B', 1]
    scores = torch.zeros(batch, device=device)
    tokens, weights = [], []  # per step: [B] pieces (PAD once ended) and [B, S] attention
    for step in range(int(limits.max())):
        attentional, state, step_weights = model.decoder(previous, state, memory)  # [B', 1, H], _, [B', 1, S]
        log_probs = torch.log_softmax(model.decoder.logits(attentional[:, 0]).float(), dim=-1)  # [B', V]
        log_probs[:, PAD_ID] = float("-inf")
        force_eos(log_probs, limits[alive] == step + 1)
        best_score, best = log_probs.max(dim=-1)  # [B']
        scores[alive] += best_score
        tokens.append(torch.full((batch,), PAD_ID, dtype=torch.long, device=device).index_copy_(0, alive, best))
        weights.append(step_weights.new_zeros(batch, src.size(1)).index_copy_(0, alive, step_weights[:, 0]))
        going = best != EOS_ID  # [B']
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            alive, best = alive[keep], best[keep]
            memory, state = memory.select(keep), state.select(keep)
        previous = best[:, None]
    token_matrix = torch.stack(tokens, dim=1).cpu()  # [B, T]
    weight_matrix = torch.stack(weights, dim=1).float().cpu()  # [B, T, S]
    return [
        _hypothesis(token_matrix[i], float(scores[i]), weight_matrix[i, :, : int(src_lengths[i])]) for i in range(batch)
    ]


def _hypothesis(tokens: Tensor, score: float, attention: Tensor) -> Hypothesis:
    ids = tokens.tolist()
    length = ids.index(EOS_ID) if EOS_ID in ids else len(ids)
    return Hypothesis(ids[:length], score, attention[: length + 1], score)


def length_penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; scores are divided by it (alpha 0: none)."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: Tensor,
    src_lengths: Tensor,
    beam_size: int = 5,
    alpha: float = 1.0,
    max_output_ratio: float = 1.5,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of source ids [B, S]: the `n_best` best hypotheses of each sentence.

    All sentences' beams advance together as one batch of B * K rows. At each step the 2K best
    extensions of a sentence are taken: those ending in EOS among the first K are finished
    (scored with the length penalty), and the K best others stay alive. A sentence is done once it
    has K finished hypotheses. Finished hypotheses never take part in later steps, so padding never
    enters a score. With K = 1 this is exactly greedy search.
    """
    device, batch, k = src.device, src.size(0), beam_size
    src_mask = src != PAD_ID
    memory, state = model.encode(src, src_lengths, src_mask)
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # [B*K]: each row's sentence
    memory, state = memory.select(rows), state.select(rows)
    limits = max_output_lengths(src_lengths, max_output_ratio).to(device)  # [B]
    alive = torch.arange(batch, device=device)  # [B']: sentences still searching (done ones leave the batch)
    scores = torch.full((batch, k), float("-inf"), device=device)  # [B', K]
    scores[:, 0] = 0.0  # one live beam per sentence at the start
    tokens = torch.full((batch * k, 1), BOS_ID, dtype=torch.long, device=device)  # [B'*K, t+1]
    attention = torch.zeros(batch * k, 0, src.size(1), device=device)  # [B'*K, t, S]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for step in range(int(limits.max())):
        searching = alive.numel()
        attentional, state, step_weights = model.decoder(tokens[:, -1:], state, memory)
        log_probs = torch.log_softmax(model.decoder.logits(attentional[:, 0]).float(), dim=-1)  # [B'*K, V]
        log_probs[:, PAD_ID] = float("-inf")
        force_eos(log_probs, (limits[alive] == step + 1).repeat_interleave(k))
        vocab = log_probs.size(1)
        candidates = (scores.view(-1, 1) + log_probs).view(searching, k * vocab)
        cand_scores, cand_index = candidates.topk(2 * k, dim=1)  # [B', 2K]
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        attention = torch.cat([attention, step_weights.float()], dim=1)  # [B'*K, t+1, S]
        is_eos = (cand_token == EOS_ID) & torch.isfinite(cand_scores)
        is_eos[:, k:] = False  # only an EOS among the K best can finish a hypothesis
        for i, j in is_eos.nonzero().tolist():
            b = int(alive[i])
            if len(finished[b]) >= k:
                continue
            row = i * k + int(cand_beam[i, j])
            ids = tokens[row, 1:].tolist()
            raw = float(cand_scores[i, j])
            score = raw / length_penalty(len(ids) + 1, alpha)
            weights = attention[row, :, : int(src_lengths[b])].cpu()
            finished[b].append(Hypothesis(ids, score, weights, raw))
        going = torch.tensor([len(finished[int(b)]) < k for b in alive], device=device)  # [B']
        if not bool(going.any()):
            break
        # The K best candidates that do not end here stay alive (EOS ones sort last).
        position = torch.arange(2 * k, device=device).expand(searching, -1)
        keep = (position + 2 * k * (cand_token == EOS_ID)).argsort(dim=1)[:, :k]  # [B', K]
        parent = cand_beam.gather(1, keep) + torch.arange(searching, device=device)[:, None] * k  # [B', K]
        scores, new_tokens = cand_scores.gather(1, keep), cand_token.gather(1, keep)
        if not bool(going.all()):  # sentences with K finished hypotheses leave the batch
            still = going.nonzero().squeeze(1)
            alive, scores, new_tokens, parent = alive[still], scores[still], new_tokens[still], parent[still]
            memory = memory.select((still[:, None] * k + torch.arange(k, device=device)).view(-1))
        parent = parent.view(-1)
        tokens = torch.cat([tokens[parent], new_tokens.view(-1, 1)], dim=1)
        attention, state = attention[parent], state.select(parent)
    return [sorted(f, key=lambda h: h.score, reverse=True)[:n_best] for f in finished]


def decode_lines(
    model: Seq2Seq,
    tokenizer,
    lines: list[str],
    device: torch.device,
    batch_tokens: int = 4000,
    max_output_ratio: float = 1.5,
    beam_size: int = 1,
    alpha: float = 1.0,
    n_best: int = 1,
    max_src_length: int | None = None,
    progress=None,
    precision: str = "fp32",
) -> list[list[Hypothesis]]:
    """The `n_best` translations of each line, batched by length; an empty line gives one empty hypothesis.

    Beam size 1 is greedy search. `max_src_length` truncates longer sources (in pieces, EOS
    included); `progress` is an optional tqdm bar advanced by lines; precision "bf16" decodes under
    bfloat16 autocast (scores and attention stay float32).
    """
    encoded = tokenizer.encode_src(lines)
    if max_src_length is not None:
        encoded = [_truncated(ids, max_src_length - 1, number) for number, ids in enumerate(encoded, start=1)]
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, torch.zeros(1, 0))] for _ in lines]
    order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
    for batch in _length_batches(order, encoded, max(1, batch_tokens // beam_size)):
        sources = [torch.tensor(encoded[i] + [EOS_ID]) for i in batch]
        src = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD_ID).to(device)
        src_lengths = torch.tensor([len(s) for s in sources], device=device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if beam_size == 1:
                found = [[h] for h in greedy_search(model, src, src_lengths, max_output_ratio)]
            else:
                found = beam_search(model, src, src_lengths, beam_size, alpha, max_output_ratio, n_best)
        for index, hypotheses in zip(batch, found):
            results[index] = hypotheses
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.update(len(lines) - len(order))  # the empty lines
    return results


def _truncated(ids: list[int], limit: int, number: int) -> list[int]:
    if len(ids) > limit:
        log.warning(
            "line %d has %d pieces: only the first %d are translated (--max-src-length)", number, len(ids), limit
        )
    return ids[:limit]


def attention_view(tokenizer, src_ids: list[int], hypothesis: Hypothesis) -> tuple[list[str], list[str], Tensor]:
    """Source pieces, output pieces and attention [out, src] without the EOS row and column (for display)."""
    weights = hypothesis.attention[: len(hypothesis.ids), : len(src_ids)]
    return tokenizer.src_pieces(src_ids), tokenizer.tgt_pieces(hypothesis.ids), weights


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
