"""Word alignments from attention: for translations the model produced, and for given ones (forced decoding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from seq2seq.checkpoint import load_trained
from seq2seq.data import EncodedCorpus, ParallelDataset, collate, read_parallel_files
from seq2seq.device import resolve_device


def word_spans(pieces: list[str]) -> list[int]:
    """The word index of each SentencePiece piece (a piece starting with '▁' starts a word)."""
    spans, word = [], -1
    for piece in pieces:
        if piece.startswith("▁") or word < 0:
            word += 1
        spans.append(word)
    return spans


def word_alignment(src_pieces: list[str], out_pieces: list[str], weights: torch.Tensor) -> list[tuple[int, int]]:
    """Hard word alignments (source word i, output word j) in Pharaoh order: each output word to its most attended source word.

    weights: [len(out_pieces), len(src_pieces)] without the EOS row and column. Attention is summed
    over the pieces of a source word and averaged over the pieces of an output word.
    """
    if not src_pieces or not out_pieces:
        return []
    src_words, out_words = word_spans(src_pieces), word_spans(out_pieces)
    n_src, n_out = src_words[-1] + 1, out_words[-1] + 1
    per_src_word = torch.zeros(len(out_pieces), n_src).index_add_(1, torch.tensor(src_words), weights.float())
    per_word = torch.zeros(n_out, n_src).index_add_(0, torch.tensor(out_words), per_src_word)
    best_source = per_word.argmax(dim=1).tolist()
    return [(i, j) for j, i in enumerate(best_source)]


def pharaoh(pairs: list[tuple[int, int]]) -> str:
    """Alignments as 'i-j i-j ...'."""
    return " ".join(f"{i}-{j}" for i, j in pairs)


@torch.no_grad()
def force_align(
    checkpoint: str, src_file: str, tgt_file: str, output: str, device: str = "auto", batch_size: int = 64
) -> dict:
    """Teacher-force each given translation; write OUTPUT.align (Pharaoh i-j) and OUTPUT.npz (raw weights).

    The .npz holds, for sentence n, `weights_n` [target pieces + EOS, source pieces + EOS] and the
    pieces as `src_pieces_n` / `tgt_pieces_n`.
    """
    torch_device = resolve_device(device)
    trained = load_trained(checkpoint, torch_device)
    model, tokenizer = trained.model, trained.tokenizer
    src_lines, tgt_lines = read_parallel_files(Path(src_file), Path(tgt_file), what="input")
    src_ids, tgt_ids = tokenizer.encode_src(src_lines), tokenizer.encode_tgt(tgt_lines)
    dataset = ParallelDataset(EncodedCorpus.from_lists(src_ids, tgt_ids))
    alignments, arrays = [], {}
    for start in tqdm(range(0, len(dataset), batch_size), unit="batch", desc="aligning", disable=None):
        indices = list(range(start, min(start + batch_size, len(dataset))))
        batch = collate([dataset[i] for i in indices]).to(torch_device)
        weights = model.attend(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)  # [B, T, S]
        for row, n in enumerate(indices):
            src_n, tgt_n = len(src_ids[n]), len(tgt_ids[n])
            sentence = weights[row, : tgt_n + 1, : src_n + 1].float().cpu()
            src_pieces, tgt_pieces = tokenizer.src_pieces(src_ids[n]), tokenizer.tgt_pieces(tgt_ids[n])
            alignments.append(pharaoh(word_alignment(src_pieces, tgt_pieces, sentence[:tgt_n, :src_n])))
            arrays[f"weights_{n}"] = sentence.numpy()
            arrays[f"src_pieces_{n}"] = np.array(src_pieces, dtype=str)
            arrays[f"tgt_pieces_{n}"] = np.array(tgt_pieces, dtype=str)
    align_path, npz_path = Path(f"{output}.align"), Path(f"{output}.npz")
    align_path.parent.mkdir(parents=True, exist_ok=True)
    align_path.write_text("".join(a + "\n" for a in alignments), encoding="utf-8")
    np.savez_compressed(npz_path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
    return {"sentences": len(alignments), "alignments": str(align_path), "weights": str(npz_path)}
