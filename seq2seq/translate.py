"""Translate with a checkpoint: an interactive prompt with attention heatmaps, or a batch from a file/stdin."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from seq2seq.align import pharaoh, word_alignment
from seq2seq.checkpoint import load_trained
from seq2seq.config import decode_with
from seq2seq.device import resolve_device
from seq2seq.model import Seq2Seq
from seq2seq.plots import plot_attention
from seq2seq.search import Hypothesis, attention_view, decode_lines

log = logging.getLogger(__name__)

SHADES = " ░▒▓█"
HISTORY_FILE = Path.home() / ".seq2seq_history"


# --- attention as text ---------------------------------------------------------------------------


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


# --- translating -------------------------------------------------------------------------------


class Translator:
    """A checkpoint loaded once, and the decoding options to translate with.

    `decode` overrides the checkpoint's own `decode` section (e.g. {"beam": 1, "n_best": 3}).
    """

    def __init__(self, checkpoint: str | Path, decode: Mapping[str, Any] | None = None, device: str = "auto"):
        self.device = resolve_device(device)
        self.trained = load_trained(checkpoint, self.device)
        self.options = decode_with(self.trained.config.decode, decode)
        self.tokenizer, self.config = self.trained.tokenizer, self.trained.config

    @property
    def model(self) -> Seq2Seq:
        """The loaded model (eval mode)."""
        return self.trained.model

    @property
    def n_best(self) -> int:
        """Hypotheses given per sentence."""
        return self.options.n_best

    def translate(self, lines: list[str], progress: Any = None) -> list[list[Hypothesis]]:
        """The n-best hypotheses of each line (an empty line gives one empty hypothesis)."""
        return decode_lines(self.trained.model, self.tokenizer, lines, self.device, self.options, progress)

    def pieces(self, line: str, hypothesis: Hypothesis) -> tuple[list[str], list[str], torch.Tensor]:
        """Source pieces, output pieces and attention [out, src] without EOS, for display or alignment."""
        src_ids = self.tokenizer.encode_src([line])[0]
        if self.options.max_src_length is not None:
            src_ids = src_ids[: self.options.max_src_length - 1]
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
