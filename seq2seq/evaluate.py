"""Score checkpoint(s) on a test set: translate, detokenize, BLEU and chrF with sacreBLEU signatures."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from seq2seq.config import Config, DecodeConfig, decode_with
from seq2seq.data import read_parallel, read_parallel_files
from seq2seq.device import check_precision
from seq2seq.ensemble import load_ensemble
from seq2seq.errors import UserError
from seq2seq.metrics import bleu, chrf
from seq2seq.quantize import check_quantize_precision, decoding_device
from seq2seq.search import decode_lines

log = logging.getLogger(__name__)


def test_files(config: Config, split: str, src: str | None, ref: str | None) -> tuple[list[str], list[str], str]:
    """Source and reference lines: the given files, or the config's split (test or dev)."""
    if (src is None) != (ref is None):
        raise UserError("give both --src and --ref, or neither (then --split chooses the config's test or dev set)")
    if src is not None and ref is not None:
        src_lines, ref_lines = read_parallel_files(Path(src), Path(ref), what="test set")
        return src_lines, ref_lines, Path(src).stem
    prefix = getattr(config.data, split)
    if not prefix:
        raise UserError(f"the checkpoint's config has no data.{split} set: give --src and --ref")
    src_lines, ref_lines, _ = read_parallel(prefix, config.data.src_lang, config.data.tgt_lang)
    return src_lines, ref_lines, split


def evaluate(
    checkpoint: str | Path | Sequence[str | Path],
    split: str = "test",
    src: str | None = None,
    ref: str | None = None,
    decode: Mapping[str, Any] | None = None,
    output: str | None = None,
    report: str | None = None,
    device: str = "auto",
    weights: Sequence[float] | None = None,
    quantize: str = "none",
) -> dict:
    """Translate a test set with checkpoint(s) (several: an ensemble); write hypotheses and a JSON report; return it.

    `decode` overrides the (first) checkpoint's decode section (e.g. {"beam": 1}); `quantize` 'int8' decodes
    with int8 models on the CPU (seq2seq/quantize.py).
    """
    checkpoints = [str(checkpoint)] if isinstance(checkpoint, (str, Path)) else [str(c) for c in checkpoint]
    torch_device = decoding_device(device, quantize)
    loaded = load_ensemble(checkpoints, torch_device, weights, quantize)
    options = dataclasses.replace(decode_with(loaded.config.decode, decode), n_best=1)  # only the best is scored
    check_quantize_precision(quantize, options.precision, "--precision")
    check_precision(torch_device, options.precision, "--precision")
    src_lines, ref_lines, name = test_files(loaded.config, split, src, ref)
    if not src_lines:
        raise UserError(f"the test set '{name}' is empty: give files with at least one line")
    output_path, report_path = _output_paths(checkpoints, name, options, quantize, output, report)
    started = time.perf_counter()
    with tqdm(total=len(src_lines), unit="sent", desc="translating", disable=None) as bar:
        hypotheses = decode_lines(loaded.ensemble, loaded.tokenizer, src_lines, torch_device, options, bar)
    seconds = time.perf_counter() - started
    texts = [loaded.tokenizer.decode_tgt(best[0].ids) for best in hypotheses]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    result = {
        "checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
        "step": loaded.steps[0] if len(checkpoints) == 1 else loaded.steps,
        **({"ensemble_weights": loaded.ensemble.weights} if len(checkpoints) > 1 else {}),
        "test_set": {"name": name, "sentences": len(src_lines)},
        "decoding": vars(options),
        **_scores(texts, ref_lines),
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(src_lines) / seconds, 2) if seconds else None,
        "device": str(torch_device),
        "quantize": quantize,
        "hypotheses": str(output_path),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["report"] = str(report_path)
    return result


def _output_paths(
    checkpoints: list[str], name: str, options: DecodeConfig, quantize: str, output: str | None, report: str | None
) -> tuple[Path, Path]:
    """Hypotheses and report files: as given, or beside the (first) checkpoint, e.g. best.test.beam5.hyp / .json
    (best.ensemble3.test.beam5.hyp for an ensemble of three, best.test.sample7.hyp when sampling with seed 7,
    best.test.beam5.int8.hyp with --quantize int8)."""
    search = f"sample{options.seed}" if options.sample else f"beam{options.beam}" if options.beam > 1 else "greedy"
    first = Path(checkpoints[0])
    ensemble = f".ensemble{len(checkpoints)}" if len(checkpoints) > 1 else ""
    quantized = "" if quantize == "none" else f".{quantize}"
    output_path = Path(output) if output else first.with_name(f"{first.stem}{ensemble}.{name}.{search}{quantized}.hyp")
    return output_path, Path(report) if report else output_path.with_suffix(".json")


def _scores(texts: list[str], references: list[str]) -> dict[str, Any]:
    """BLEU and chrF with their sacreBLEU signatures and one-line texts."""
    bleu_score, chrf_score = bleu(texts, references), chrf(texts, references)
    return {
        "bleu": bleu_score.value,
        "bleu_signature": bleu_score.signature,
        "bleu_text": bleu_score.text,
        "chrf": chrf_score.value,
        "chrf_signature": chrf_score.signature,
        "chrf_text": chrf_score.text,
    }
