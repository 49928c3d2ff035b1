"""Scoring given translations (forced decoding): the log-probability of each target under the model(s)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from seq2seq.data import collate
from seq2seq.ensemble import Ensemble
from seq2seq.model import Seq2Seq
from seq2seq.search import as_ensemble, length_batches
from seq2seq.tokenizer import EOS_ID, Tokenizer

END_PIECE = "</s>"  # how the end of sentence shows among a target's pieces


@dataclass
class Scored:
    """A target's log-probability given its source: in total and for each piece (the end of sentence included)."""

    log_prob: float
    pieces: list[str]
    piece_log_probs: list[float]

    @property
    def per_piece(self) -> float:
        """The mean log-probability per piece."""
        return self.log_prob / len(self.pieces)


@torch.no_grad()
def score_lines(
    model: Seq2Seq | Ensemble,
    tokenizer: Tokenizer,
    sources: list[str],
    targets: list[str],
    device: torch.device,
    batch_tokens: int = 4000,
    progress: Any = None,
) -> list[Scored | None]:
    """Score each target given its source, batched by length; an empty source gives None (an empty output line)."""
    ensemble = as_ensemble(model)
    src_ids, tgt_ids = tokenizer.encode_src(sources), tokenizer.encode_tgt(targets)
    results: list[Scored | None] = [None] * len(sources)
    width = [max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids)]
    order = sorted((i for i, ids in enumerate(src_ids) if ids), key=lambda i: width[i])
    for batch in length_batches(order, width, batch_tokens):
        pairs = [(torch.tensor(src_ids[i] + [EOS_ID]), torch.tensor(tgt_ids[i] + [EOS_ID])) for i in batch]
        padded = collate(pairs).to(device)
        log_probs = ensemble.teacher_forced(padded.src, padded.src_lengths, padded.tgt_in)  # [B, T, V]
        chosen = log_probs.gather(2, padded.tgt_out[..., None])[..., 0].cpu()  # [B, T]
        for row, index in enumerate(batch):
            values = chosen[row, : len(tgt_ids[index]) + 1].double().tolist()
            pieces = tokenizer.tgt_pieces(tgt_ids[index]) + [END_PIECE]
            results[index] = Scored(sum(values), pieces, values)
        if progress is not None:
            progress.update(len(batch))
    if progress is not None:
        progress.update(len(sources) - len(order))
    return results


def write_scores(results: list[Scored | None], sink: TextIO, output_format: str, per_piece: bool) -> None:
    """One line per pair: TSV (log-probability, per piece[, each piece's]) or a JSON object; for an empty source an
    empty line (TSV) or null (JSON lines)."""
    for scored in results:
        if scored is None:
            sink.write("null\n" if output_format == "jsonl" else "\n")
        elif output_format == "jsonl":
            record: dict[str, Any] = {"log_prob": scored.log_prob, "per_piece": scored.per_piece}
            if per_piece:
                record.update(pieces=scored.pieces, piece_log_probs=scored.piece_log_probs)
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            columns = [f"{scored.log_prob:.4f}", f"{scored.per_piece:.4f}"]
            if per_piece:
                columns.append(" ".join(f"{p}:{v:.4f}" for p, v in zip(scored.pieces, scored.piece_log_probs)))
            sink.write("\t".join(columns) + "\n")
