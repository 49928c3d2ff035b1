"""Translate with checkpoint(s): the Python API (`Translator`), an interactive prompt with attention heatmaps, a batch."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from seq2seq.align import pharaoh, word_alignment
from seq2seq.config import DecodeConfig, decode_with
from seq2seq.device import check_precision
from seq2seq.ensemble import load_ensemble
from seq2seq.errors import UserError
from seq2seq.model import Seq2Seq
from seq2seq.plots import plot_attention
from seq2seq.quantize import check_quantize_precision, decoding_device
from seq2seq.score import Scored, score_lines
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


@dataclass
class Candidate:
    """One translation of a sentence: detokenized text, score, output pieces and their attention."""

    text: str
    score: float  # the search's ranking score (log-probability with the length and coverage penalties)
    log_prob: float  # the log-probability of the pieces and the end of sentence
    pieces: list[str]
    attention: torch.Tensor  # [output pieces, source pieces], without the end-of-sentence row and column
    ids: list[int]


@dataclass
class Translation:
    """A source sentence, its pieces, and its n-best candidates (best first)."""

    source: str
    source_pieces: list[str]
    hypotheses: list[Candidate]

    @property
    def best(self) -> Candidate:
        """The first candidate."""
        return self.hypotheses[0]


class Translator:
    """One or more checkpoints loaded once (several decode as an ensemble), and the options to decode with.

    `decode` overrides the first checkpoint's own `decode` section (e.g. {"beam": 1, "n_best": 3}); `quantize`
    'int8' quantizes the models for CPU decoding (seq2seq/quantize.py).
    """

    def __init__(
        self,
        checkpoints: str | Path | Sequence[str | Path],
        decode: Mapping[str, Any] | DecodeConfig | None = None,
        device: str = "auto",
        weights: Sequence[float] | None = None,
        quantize: str = "none",
    ):
        self.device, self.quantize = decoding_device(device, quantize), quantize
        self.loaded = load_ensemble(checkpoints, self.device, weights, quantize)
        self.options = decode_with(self.loaded.config.decode, decode)
        self.check_precision(self.options, "--precision")
        self.tokenizer, self.config = self.loaded.tokenizer, self.loaded.config

    @classmethod
    def load(
        cls,
        checkpoints: str | Path | Sequence[str | Path],
        device: str = "auto",
        weights: Sequence[float] | None = None,
        quantize: str = "none",
        **decode: Any,
    ) -> Translator:
        """Load checkpoint(s) once; keyword arguments are decoding options (beam=5, n_best=2, sample=True, ...)."""
        return cls(checkpoints, decode, device, weights, quantize)

    def check_precision(self, decode: DecodeConfig, setting: str = "precision") -> None:
        """A UserError naming `setting` if these models cannot decode in `decode.precision` (see device.py and
        quantize.py)."""
        check_quantize_precision(self.quantize, decode.precision, setting)
        check_precision(self.device, decode.precision, setting)

    @property
    def model(self) -> Seq2Seq:
        """The (first) loaded model, in eval mode."""
        return self.loaded.ensemble.models[0]

    @property
    def n_best(self) -> int:
        """Hypotheses given per sentence."""
        return self.options.n_best

    def translate(
        self, lines: Sequence[str], progress: Any = None, *, decode: DecodeConfig | None = None, **options: Any
    ) -> list[Translation]:
        """Translate each line (an empty line gives one empty candidate).

        `options` override decoding for this call (beam=1, ...); `decode` replaces it whole (already checked).
        """
        if decode is None:
            decode = decode_with(self.options, options) if options else self.options
            self.check_precision(decode)
        found = decode_lines(self.loaded.ensemble, self.tokenizer, list(lines), self.device, decode, progress)
        return [self._translation(line, hypotheses, decode) for line, hypotheses in zip(lines, found)]

    def score(self, sources: Sequence[str], targets: Sequence[str], progress: Any = None) -> list[Scored | None]:
        """The log-probability of each target given its source (None for an empty source)."""
        if len(sources) != len(targets):
            raise UserError(f"{len(sources)} sources but {len(targets)} targets: give one target per source")
        return score_lines(
            self.loaded.ensemble,
            self.tokenizer,
            list(sources),
            list(targets),
            self.device,
            self.options.batch_tokens,
            progress,
        )

    def _translation(self, line: str, hypotheses: list[Hypothesis], decode: DecodeConfig) -> Translation:
        src_ids = self.tokenizer.encode_src([line])[0]
        if decode.max_src_length is not None:
            src_ids = src_ids[: decode.max_src_length - 1]
        candidates = []
        for hypothesis in hypotheses:
            _, out_pieces, weights = attention_view(self.tokenizer, src_ids, hypothesis)
            text = self.tokenizer.decode_tgt(hypothesis.ids)
            candidates.append(
                Candidate(text, hypothesis.score, hypothesis.log_prob, out_pieces, weights, hypothesis.ids)
            )
        return Translation(line, self.tokenizer.src_pieces(src_ids), candidates)


def translate_batch(translator: Translator, source: TextIO, sink: TextIO, alignment: TextIO | None = None) -> int:
    """Translate every line of `source` to `sink` (one output line per input line); returns the line count."""
    lines = [line.rstrip("\r\n") for line in source]
    with tqdm(
        total=len(lines), unit="sent", desc="translating", disable=None if len(lines) > 50 else True, file=sys.stderr
    ) as bar:
        results = translator.translate(lines, progress=bar)
    for translation in results:
        if translator.n_best > 1:
            sink.write(" ||| ".join(f"{c.text} ||| {c.score:.4f}" for c in translation.hypotheses) + "\n")
        else:
            sink.write(translation.best.text + "\n")
        if alignment is not None:
            best = translation.best
            alignment.write(pharaoh(word_alignment(translation.source_pieces, best.pieces, best.attention)) + "\n")
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
        translation = translator.translate([line])[0]
        for rank, candidate in enumerate(translation.hypotheses, start=1):
            prefix = f"{rank}. " if translator.n_best > 1 else ""
            suffix = f"   (score {candidate.score:.3f})" if translator.n_best > 1 else ""
            out.write(f"{prefix}{candidate.text}{suffix}\n")
        src_pieces, out_pieces, weights = translation.source_pieces, translation.best.pieces, translation.best.attention
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
