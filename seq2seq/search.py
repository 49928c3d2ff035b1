"""Decoding: greedy search, beam search and sampling over batches of sentences, and `decode_lines` for raw text.

Each returns, for each sentence, hypotheses with their scores and the attention of every output
piece. `decode_lines` tokenizes, truncates, batches by length and decodes lines
with the options of a `DecodeConfig` (seq2seq/config.py: where every decoding default lives).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from seq2seq.config import DecodeConfig
from seq2seq.device import autocast
from seq2seq.ensemble import Ensemble
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Hypothesis:
    """One output: piece ids (without EOS), its score, attention [len(ids) + 1, S], log-probability.

    `score` ranks hypotheses: in beam search the log-probability divided by the length penalty, plus
    the coverage penalty; in greedy search and sampling the log-probability itself.
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


def mask_next(log_probs: Tensor, out_of_room: Tensor) -> Tensor:
    """In place, and returned: next-piece log-probabilities [N, V] that never choose PAD, and only EOS
    for the rows `out_of_room` [N] marks."""
    log_probs[:, PAD_ID] = float("-inf")
    force_eos(log_probs, out_of_room)
    return log_probs


def as_ensemble(model: Seq2Seq | Ensemble) -> Ensemble:
    """A model as an ensemble of one (the searches decode ensembles)."""
    return model if isinstance(model, Ensemble) else Ensemble([model])


@torch.no_grad()
def greedy_search(
    model: Seq2Seq | Ensemble, src: Tensor, src_lengths: Tensor, max_output_ratio: float = 1.5
) -> list[Hypothesis]:
    """Most probable piece at each step, for a batch of source ids [B, S] (EOS-terminated)."""
    return _stepwise_search(as_ensemble(model), src, src_lengths, max_output_ratio, lambda log_probs, rows: None)


@torch.no_grad()
def sample_search(
    model: Seq2Seq | Ensemble, src: Tensor, src_lengths: Tensor, options: DecodeConfig, seeds: list[int]
) -> list[Hypothesis]:
    """`len(seeds) // B` samples for each source row of [B, S] (rows in order, each sentence's samples together),
    drawn with `options`' temperature, top-k and top-p.

    Sample i draws from its own generator seeded with seeds[i], so a sentence's samples do not depend
    on the other sentences in its batch. The score is the sample's log-probability under the model.
    """
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def draw(log_probs: Tensor, rows: Tensor) -> Tensor:
        probs = sampling_distribution(log_probs, options)  # [N, V]
        uniform = torch.stack([torch.rand((), generator=generators[row]) for row in rows.tolist()]).to(probs.device)
        cumulative = probs.cumsum(dim=-1)
        return (
            torch.searchsorted(cumulative, uniform[:, None] * cumulative[:, -1:], right=True)
            .squeeze(1)
            .clamp_(max=probs.size(1) - 1)
        )

    copies = len(seeds) // src.size(0)
    return _stepwise_search(as_ensemble(model), src, src_lengths, options.max_output_ratio, draw, copies)


def sampling_distribution(log_probs: Tensor, options: DecodeConfig) -> Tensor:
    """Probabilities [N, V] to sample from: log-probabilities [N, V] tempered, then cut to top-k and top-p."""
    # The best piece at 0 before dividing: a tiny temperature cannot turn every logit into -inf.
    logits = (log_probs - log_probs.amax(dim=-1, keepdim=True)) / options.temperature
    if options.top_k:
        top = logits.topk(min(options.top_k, logits.size(1)), dim=-1).indices  # [N, k]: exactly k, ties or not
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top, True)
        logits = logits.masked_fill(~kept, float("-inf"))
    if options.top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        beyond = probs.cumsum(dim=-1) - probs >= options.top_p  # pieces after the nucleus is full
        logits = logits.scatter(1, order, ordered.masked_fill(beyond, float("-inf")))
    return torch.softmax(logits, dim=-1)


def _stepwise_search(
    ensemble: Ensemble,
    src: Tensor,
    src_lengths: Tensor,
    max_output_ratio: float,
    choose: Callable[[Tensor, Tensor], Tensor | None],
    copies: int = 1,
) -> list[Hypothesis]:
    """`copies` hypotheses per source row: the piece `choose(log_probs, rows)` picks at each step (None: the most
    probable). The sources are encoded once; sentences leave the batch as soon as they end.
    """
    state = ensemble.start(src, src_lengths)
    if copies > 1:
        rows = torch.arange(src.size(0), device=src.device).repeat_interleave(copies)
        state, src_lengths = state.select(rows), src_lengths[rows]
    batch, device = src_lengths.size(0), src.device
    limits = max_output_lengths(src_lengths, max_output_ratio).to(device)  # [B]
    alive = torch.arange(batch, device=device)  # [B']: the sentences still being decoded
    previous = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)  # [B', 1]
    scores = torch.zeros(batch, device=device)
    tokens, weights = [], []  # per step: [B] pieces (PAD once ended) and [B, S] attention
    for step in range(int(limits.max())):
        log_probs, step_weights, state = ensemble.step(previous, state)  # [B', V], [B', S]
        log_probs = mask_next(log_probs, limits[alive] == step + 1)
        chosen = choose(log_probs, alive)
        best_score, best = (
            log_probs.max(dim=-1) if chosen is None else (log_probs.gather(1, chosen[:, None])[:, 0], chosen)
        )
        scores[alive] += best_score
        tokens.append(torch.full((batch,), PAD_ID, dtype=torch.long, device=device).index_copy_(0, alive, best))
        weights.append(step_weights.new_zeros(batch, src.size(1)).index_copy_(0, alive, step_weights))
        going = best != EOS_ID  # [B']
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            alive, best, state = alive[keep], best[keep], state.select(keep)
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


def coverage_penalty(attention: Tensor, beta: float) -> float:
    """GNMT coverage penalty beta * sum_j log(min(sum_i a_ij, 1)) for attention [output pieces, source pieces]:
    0 when every source piece got a total attention of 1 or more, negative for pieces left uncovered."""
    coverage = attention.float().sum(dim=0).clamp(min=1e-10, max=1.0)  # [S]
    return beta * float(coverage.log().sum())


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha; scores are divided by it (alpha 0: none).

    An alpha too large for a float (1e4, say) gives infinity: every score divides to 0, a tie, not a crash."""
    try:
        return ((5 + length) / 6) ** alpha
    except OverflowError:
        return math.inf


@torch.no_grad()
def beam_search(
    model: Seq2Seq | Ensemble,
    src: Tensor,
    src_lengths: Tensor,
    beam_size: int = 5,
    alpha: float = 1.0,
    max_output_ratio: float = 1.5,
    n_best: int = 1,
    coverage_beta: float = 0.0,
) -> list[list[Hypothesis]]:
    """Beam search over a batch of source ids [B, S]: the `n_best` best hypotheses of each sentence.

    All sentences' beams advance together as one batch of B * K rows. At each step the 2K best
    extensions of a sentence are taken: those ending in EOS among the first K are finished
    (scored with the length penalty), and the K best others stay alive. A sentence is done once it
    has K finished hypotheses and leaves the batch. Finished hypotheses never take part in later
    steps, so padding never enters a score. With K = 1 this is exactly greedy search. A finished
    hypothesis's score also gains the GNMT coverage penalty with weight `coverage_beta` (0: none).
    """
    device, batch, k = src.device, src.size(0), beam_size
    ensemble = as_ensemble(model)
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # [B*K]: each row's sentence
    state = ensemble.start(src, src_lengths).select(rows)
    limits = max_output_lengths(src_lengths, max_output_ratio).to(device)  # [B]
    alive = torch.arange(batch, device=device)  # [B']: sentences still searching
    scores = torch.full((batch, k), float("-inf"), device=device)  # [B', K]
    scores[:, 0] = 0.0  # one live beam per sentence at the start
    tokens = torch.full((batch * k, 1), BOS_ID, dtype=torch.long, device=device)  # [B'*K, t+1]
    attention = torch.zeros(batch * k, 0, src.size(1), device=device)  # [B'*K, t, S]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for step in range(int(limits.max())):
        log_probs, step_weights, state = ensemble.step(tokens[:, -1:], state)  # [B'*K, V], [B'*K, S]
        log_probs = mask_next(log_probs, (limits[alive] == step + 1).repeat_interleave(k))
        candidates = _Candidates.best(scores, log_probs, k)
        attention = torch.cat([attention, step_weights[:, None].float()], dim=1)  # [B'*K, t+1, S]
        _collect_finished(finished, candidates, alive, tokens, attention, src_lengths, alpha, coverage_beta)
        going = torch.tensor([len(finished[int(b)]) < k for b in alive], device=device)  # [B']
        if not bool(going.any()):
            break
        scores, new_tokens, parent = candidates.survivors()  # [B', K] each
        if not bool(going.all()):  # sentences with K finished hypotheses leave the batch
            still = going.nonzero().squeeze(1)
            alive, scores, new_tokens, parent = alive[still], scores[still], new_tokens[still], parent[still]
            state = state.select_memories((still[:, None] * k + torch.arange(k, device=device)).view(-1))
        parent = parent.view(-1)
        tokens = torch.cat([tokens[parent], new_tokens.view(-1, 1)], dim=1)
        attention, state = attention[parent], state.select_states(parent)
    return [sorted(f, key=lambda h: h.score, reverse=True)[:n_best] for f in finished]


@dataclass
class _Candidates:
    """The 2K best extensions [B', 2K] of each sentence's K beams: scores, source beam, next piece."""

    scores: Tensor
    beam: Tensor
    token: Tensor
    k: int

    @classmethod
    def best(cls, scores: Tensor, log_probs: Tensor, k: int) -> _Candidates:
        """From beam scores [B', K] and next-piece log-probabilities [B'*K, V]."""
        searching, vocab = scores.size(0), log_probs.size(1)
        candidates = (scores.view(-1, 1) + log_probs).view(searching, k * vocab)
        cand_scores, cand_index = candidates.topk(2 * k, dim=1)  # [B', 2K]
        return cls(cand_scores, cand_index // vocab, cand_index % vocab, k)

    def finishing(self) -> list[tuple[int, int]]:
        """(sentence row, candidate) pairs that end here: an EOS among the K best, with a finite score."""
        is_eos = (self.token == EOS_ID) & torch.isfinite(self.scores)
        is_eos[:, self.k :] = False
        return [(i, j) for i, j in is_eos.nonzero().tolist()]

    def survivors(self) -> tuple[Tensor, Tensor, Tensor]:
        """The K best candidates that do not end here (EOS ones sort last): scores, pieces, parent rows."""
        searching = self.scores.size(0)
        position = torch.arange(2 * self.k, device=self.scores.device).expand(searching, -1)
        keep = (position + 2 * self.k * (self.token == EOS_ID)).argsort(dim=1)[:, : self.k]  # [B', K]
        rows = torch.arange(searching, device=self.scores.device)[:, None] * self.k
        parent = self.beam.gather(1, keep) + rows  # [B', K]
        return self.scores.gather(1, keep), self.token.gather(1, keep), parent


def _collect_finished(
    finished: list[list[Hypothesis]],
    candidates: _Candidates,
    alive: Tensor,
    tokens: Tensor,
    attention: Tensor,
    src_lengths: Tensor,
    alpha: float,
    beta: float,
) -> None:
    """Add the hypotheses that end at this step to `finished` (at most K per sentence), scored with the
    length penalty (alpha) and the coverage penalty (beta)."""
    for i, j in candidates.finishing():
        b = int(alive[i])
        if len(finished[b]) >= candidates.k:
            continue
        row = i * candidates.k + int(candidates.beam[i, j])
        ids = tokens[row, 1:].tolist()
        raw = float(candidates.scores[i, j])
        weights = attention[row, :, : int(src_lengths[b])].cpu()
        score = raw / length_penalty(len(ids) + 1, alpha)
        if beta:
            score += coverage_penalty(weights, beta)
        finished[b].append(Hypothesis(ids, score, weights, raw))


def decode_lines(
    model: Seq2Seq | Ensemble,
    tokenizer: Tokenizer,
    lines: list[str],
    device: torch.device,
    options: DecodeConfig,
    progress: Any = None,
) -> list[list[Hypothesis]]:
    """The `options.n_best` translations of each line, batched by length; an empty line gives one empty hypothesis.

    Beam size 1 is greedy search; `options.sample` draws n_best samples instead. Sources longer than
    `options.max_src_length` pieces (EOS included) are truncated with a warning; `progress` is an
    optional tqdm bar advanced by lines; precision "bf16" decodes under bfloat16 autocast (scores
    and attention stay float32).
    """
    encoded = tokenizer.encode_src(lines)
    if options.max_src_length is not None:
        limit = options.max_src_length - 1
        encoded = [_truncated(ids, limit, number) for number, ids in enumerate(encoded, start=1)]
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, torch.zeros(1, 0))] for _ in lines]
    rows_per_line = rows_per_sentence(options)
    order = sorted((i for i, ids in enumerate(encoded) if ids), key=lambda i: len(encoded[i]))
    widths = [len(ids) + 1 for ids in encoded]
    for batch in length_batches(order, widths, max(1, options.batch_tokens // rows_per_line)):
        sources = [torch.tensor(encoded[i] + [EOS_ID]) for i in batch]
        src = torch.nn.utils.rnn.pad_sequence(sources, batch_first=True, padding_value=PAD_ID).to(device)
        src_lengths = torch.tensor([len(s) for s in sources], device=device)
        with autocast(device, options.precision):
            found = _search(model, src, src_lengths, options, [encoded[i] for i in batch])
        for index, hypotheses in zip(batch, found):
            results[index] = hypotheses
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.update(len(lines) - len(order))  # the empty lines
    return results


def rows_per_sentence(options: DecodeConfig) -> int:
    """How many rows of a decoding batch one sentence takes: its samples, or its beam (at least n_best wide)."""
    return options.n_best if options.sample else max(options.beam, options.n_best)


def _search(
    model: Seq2Seq | Ensemble, src: Tensor, src_lengths: Tensor, options: DecodeConfig, sources: list[list[int]]
) -> list[list[Hypothesis]]:
    """The hypotheses of each source row: sampled, greedy or beam search, as `options` say."""
    if options.sample:
        n = options.n_best
        seeds = [sample_seed(options.seed, ids, draw) for ids in sources for draw in range(n)]
        samples = sample_search(model, src, src_lengths, options, seeds)
        return [sorted(samples[i * n : (i + 1) * n], key=lambda h: h.score, reverse=True) for i in range(len(sources))]
    beam_size = max(options.beam, options.n_best)
    if beam_size == 1:
        return [[h] for h in greedy_search(model, src, src_lengths, options.max_output_ratio)]
    return beam_search(
        model,
        src,
        src_lengths,
        beam_size,
        options.alpha,
        options.max_output_ratio,
        options.n_best,
        options.coverage_penalty,
    )


def sample_seed(seed: int, src_ids: list[int], draw: int) -> int:
    """The seed of one sample: from the run's seed, the sentence itself and the sample's number, so that a
    sentence gets the same samples whatever else is in its batch or its file."""
    digest = hashlib.sha256(f"{seed}:{draw}:{','.join(map(str, src_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _truncated(ids: list[int], limit: int, number: int) -> list[int]:
    if len(ids) > limit:
        log.warning(
            "line %d has %d pieces: only the first %d are translated (--max-src-length)", number, len(ids), limit
        )
    return ids[:limit]


def attention_view(
    tokenizer: Tokenizer, src_ids: list[int], hypothesis: Hypothesis
) -> tuple[list[str], list[str], Tensor]:
    """Source pieces, output pieces and attention [out, src] without the EOS row and column (for display)."""
    weights = hypothesis.attention[: len(hypothesis.ids), : len(src_ids)]
    return tokenizer.src_pieces(src_ids), tokenizer.tgt_pieces(hypothesis.ids), weights


def length_batches(order: list[int], widths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Cut indices sorted by width (padded pieces, EOS included) into batches of at most `batch_tokens` padded pieces."""
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:
        if batch and widths[index] * (len(batch) + 1) > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches
