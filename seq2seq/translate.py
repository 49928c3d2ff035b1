"""Translate with a checkpoint: an interactive prompt with attention heatmaps, or a batch from a file/stdin."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import torch
from tqdm import tqdm

from seq2seq.errors import UserError
from seq2seq.evaluate import DecodeOptions
from seq2seq.model import Trained, load_trained
from seq2seq.plots import plot_attention
from seq2seq.search import Hypothesis, attention_view, decode_lines
from seq2seq.train import resolve_device

log = logging.getLogger(__name__)

SHADES = " ░▒▓█"
HISTORY_FILE = Path.home() / ".seq2seq_history"


# --- attention as text and as word alignments ------------------------------------------------


def attention_heatmap(
    src_pieces: list[str], out_pieces: list[str], weights: torch.Tensor, label_width: int = 14
) -> str:
    """A terminal heatmap: one row per output piece, one column per source piece (names written downwards).

    weights: [len(out_pieces), len(src_pieces)]; darker blocks mean more attention.
    """
    height = min(10, max((len(p) for p in src_pieces), default=0))
    header = []
    for row in range(height):
        cells = "".join(f"{p[row] if row < len(p) else ' '} " for p in src_pieces)
        header.append(" " * (label_width + 1) + cells.rstrip())
    lines = header + [" " * (label_width + 1) + "─" * (2 * len(src_pieces))]
    for piece, row in zip(out_pieces, weights.tolist()):
        cells = "".join(SHADES[min(len(SHADES) - 1, int(w * len(SHADES)))] * 2 for w in row)
        lines.append(f"{piece[:label_width]:>{label_width}} {cells}")
    return "\n".join(lines)


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


# --- translating -------------------------------------------------------------------------------


class Translator:
    """A loaded checkpoint plus decoding options."""

    def __init__(self, checkpoint: str, options: DecodeOptions, device: str = "auto", n_best: int = 1):
        options.check()
        if n_best < 1:
            raise UserError(f"--n-best must be 1 or more, got {n_best}")
        self.options, self.n_best = options, n_best
        self.device = resolve_device(device)
        trained: Trained = load_trained(checkpoint, self.device)
        self.model, self.tokenizer, self.config = trained.model, trained.tokenizer, trained.config

    def translate(self, lines: list[str], progress=None) -> list[list[Hypothesis]]:
        """The n-best hypotheses of each line (an empty line gives one empty hypothesis)."""
        return decode_lines(
            self.model,
            self.tokenizer,
            lines,
            self.device,
            batch_tokens=self.options.batch_tokens,
            max_output_ratio=self.options.max_output_ratio,
            beam_size=max(self.options.beam_size, self.n_best),
            alpha=self.options.alpha,
            n_best=self.n_best,
            max_src_length=self.options.max_src_length,
            precision=self.options.precision,
            progress=progress,
        )

    def pieces(self, line: str, hypothesis: Hypothesis) -> tuple[list[str], list[str], torch.Tensor]:
        """Source pieces, output pieces and attention [out, src] without EOS, for display or alignment."""
        src_ids = self.tokenizer.encode_src([line])[0][: self.options.max_src_length - 1]
        return attention_view(self.tokenizer, src_ids, hypothesis)

    def text(self, hypothesis: Hypothesis) -> str:
        """Detokenized output."""
        return self.tokenizer.decode_tgt(hypothesis.ids)


def translate_batch(translator: Translator, source: TextIO, sink: TextIO, alignment: TextIO | None = None) -> int:
    """Translate every line of `source` to `sink` (one output line per input line); returns the line count."""
    lines = [line.rstrip("\r\n") for line in source]
    with tqdm(
        total=len(lines), unit="sent", desc="translating", disable=None if len(lines) > 50 else True, file=sys.stderr
    ) as bar:
        results = translator.translate(lines, progress=bar)
    for line, hypotheses in zip(lines, results):
        if translator.n_best > 1:
            sink.write(" ||| ".join(f"{translator.text(h)} ||| {h.score:.4f}" for h in hypotheses) + "\n")
        else:
            sink.write(translator.text(hypotheses[0]) + "\n")
        if alignment is not None:
            alignment.write(pharaoh(word_alignment(*translator.pieces(line, hypotheses[0]))) + "\n")
    sink.flush()
    return len(lines)


def interactive(
    translator: Translator,
    show_attention: bool = True,
    attention_png: Path | None = None,
    prompt: str = "> ",
    out: TextIO = sys.stdout,
) -> None:
    """A read-translate-print loop: type a sentence, get its translation(s) and attention; Ctrl-D quits."""
    _enable_history()
    src, tgt = translator.config.data.src_lang, translator.config.data.tgt_lang
    out.write(f"Translating {src} -> {tgt}. Type a sentence and press Enter; Ctrl-D or :q quits.\n")
    count = 0
    while True:
        try:
            line = input(prompt)
        except EOFError:
            out.write("\n")
            break
        except KeyboardInterrupt:
            out.write("\n")
            continue
        line = line.strip()
        if line in (":q", ":quit", ":exit"):
            break
        if not line:
            continue
        hypotheses = translator.translate([line])[0]
        for rank, hypothesis in enumerate(hypotheses, start=1):
            prefix = f"{rank}. " if translator.n_best > 1 else ""
            suffix = f"   (score {hypothesis.score:.3f})" if translator.n_best > 1 else ""
            out.write(f"{prefix}{translator.text(hypothesis)}{suffix}\n")
        src_pieces, out_pieces, weights = translator.pieces(line, hypotheses[0])
        if show_attention and out_pieces:
            out.write(attention_heatmap(src_pieces, out_pieces, weights) + "\n")
        if attention_png is not None and out_pieces:
            count += 1
            path = plot_attention(
                src_pieces, out_pieces, weights, attention_png / f"attention-{count:03d}.png", title=line
            )
            out.write(f"(attention saved to {path})\n")
        out.flush()
    _save_history()


def _enable_history() -> None:
    try:
        import readline

        if HISTORY_FILE.is_file():
            readline.read_history_file(HISTORY_FILE)
    except (ImportError, OSError):
        pass


def _save_history() -> None:
    try:
        import readline

        readline.set_history_length(1000)
        readline.write_history_file(HISTORY_FILE)
    except (ImportError, OSError):
        pass
