"""Score a checkpoint on a test set: translate, detokenize, BLEU and chrF with sacreBLEU signatures."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.data import read_parallel, read_parallel_files
from seq2seq.errors import UserError
from seq2seq.metrics import bleu, chrf
from seq2seq.model import load_trained
from seq2seq.search import decode_lines
from seq2seq.train import resolve_device

log = logging.getLogger(__name__)


@dataclass
class DecodeOptions:
    """How to search: beam size (1 = greedy), GNMT length penalty, output length limit, batch size, precision."""

    beam_size: int = 5
    alpha: float = 1.0
    max_output_ratio: float = 1.5
    batch_tokens: int = 4000
    max_src_length: int = 250
    precision: str = "fp32"  # fp32 | bf16 (autocast: matmuls in bfloat16)

    def check(self) -> None:
        """Raise a UserError for impossible values."""
        if self.beam_size < 1:
            raise UserError(f"--beam must be 1 or more, got {self.beam_size}")
        if self.alpha < 0:
            raise UserError(f"--alpha must be 0 or more, got {self.alpha}")
        if self.max_output_ratio <= 0 or self.batch_tokens <= 0 or self.max_src_length < 2:
            raise UserError("--max-output-ratio and --batch-tokens must be positive, --max-src-length at least 2")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"--precision must be fp32 or bf16, got {self.precision!r}")


def test_files(config, split: str, src: str | None, ref: str | None) -> tuple[list[str], list[str], str]:
    """Source and reference lines: the given files, or the config's split (test or dev)."""
    if (src is None) != (ref is None):
        raise UserError("give both --src and --ref, or neither (then --split chooses the config's test or dev set)")
    if src is not None:
        src_lines, ref_lines = read_parallel_files(Path(src), Path(ref), what="test set")
        return src_lines, ref_lines, Path(src).stem
    prefix = getattr(config.data, split)
    if not prefix:
        raise UserError(f"the checkpoint's config has no data.{split} set: give --src and --ref")
    src_lines, ref_lines, _ = read_parallel(prefix, config.data.src_lang, config.data.tgt_lang)
    return src_lines, ref_lines, split


def evaluate(
    checkpoint: str,
    split: str = "test",
    src: str | None = None,
    ref: str | None = None,
    options: DecodeOptions | None = None,
    output: str | None = None,
    report: str | None = None,
    device: str = "auto",
) -> dict:
    """Translate a test set with a checkpoint; write hypotheses and a JSON report; return the report."""
    options = options or DecodeOptions()
    options.check()
    torch_device = resolve_device(device)
    model, tokenizer, config, step = load_trained(checkpoint, torch_device)
    src_lines, ref_lines, name = test_files(config, split, src, ref)
    if not src_lines:
        raise UserError(f"the test set '{name}' is empty: give files with at least one line")
    tag = f"{name}.beam{options.beam_size}" if options.beam_size > 1 else f"{name}.greedy"
    output_path = Path(output) if output else Path(checkpoint).with_name(f"{Path(checkpoint).stem}.{tag}.hyp")
    report_path = Path(report) if report else output_path.with_suffix(".json")
    started = time.perf_counter()
    with tqdm(total=len(src_lines), unit="sent", desc="translating", disable=None) as bar:
        hypotheses = decode_lines(
            model,
            tokenizer,
            src_lines,
            torch_device,
            batch_tokens=options.batch_tokens,
            max_output_ratio=options.max_output_ratio,
            beam_size=options.beam_size,
            alpha=options.alpha,
            max_src_length=options.max_src_length,
            precision=options.precision,
            progress=bar,
        )
    seconds = time.perf_counter() - started
    texts = [tokenizer.decode_tgt(best[0].ids) for best in hypotheses]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    bleu_score, chrf_score = bleu(texts, ref_lines), chrf(texts, ref_lines)
    result = {
        "checkpoint": str(checkpoint),
        "step": step,
        "test_set": {"name": name, "sentences": len(src_lines)},
        "decoding": vars(options),
        "bleu": bleu_score.value,
        "bleu_signature": bleu_score.signature,
        "bleu_text": bleu_score.text,
        "chrf": chrf_score.value,
        "chrf_signature": chrf_score.signature,
        "chrf_text": chrf_score.text,
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(src_lines) / seconds, 2) if seconds else None,
        "device": str(torch_device),
        "hypotheses": str(output_path),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    result["report"] = str(report_path)
    return result


def average_checkpoints(paths: list[str], output: str) -> dict:
    """Average the weights of several checkpoints of one run into a new weights-only checkpoint."""
    if len(paths) < 2:
        raise UserError("give at least two checkpoints to average")
    payloads = [load_checkpoint(p) for p in paths]
    reference = payloads[-1]
    for path, payload in zip(paths, payloads):
        if payload.get("config", {}).get("model") != reference.get("config", {}).get("model"):
            raise UserError(
                f"{path} has a different model config from {paths[-1]}: only checkpoints of one run can be averaged"
            )
        if payload["model"].keys() != reference["model"].keys():
            raise UserError(f"{path} has different parameters from {paths[-1]}")
    averaged = {}
    for name, tensor in reference["model"].items():
        if tensor.is_floating_point():
            averaged[name] = sum(p["model"][name].double() for p in payloads).div(len(payloads)).to(tensor.dtype)
        else:
            averaged[name] = tensor
    result = {key: reference[key] for key in ("config", "tokenizer", "step", "run") if key in reference}
    result.update(model=averaged, averaged_from=[str(p) for p in paths], best_bleu=None)
    save_checkpoint(result, output)
    return {"output": output, "averaged": len(paths), "from": [str(p) for p in paths]}


def last_checkpoints(run_dir: str, count: int) -> list[str]:
    """The `count` newest step checkpoints of a run directory, oldest first."""
    found = sorted(Path(run_dir).glob("step-*.pt"))
    if not found:
        raise UserError(f"no step-*.pt checkpoints in {run_dir} (train.keep_checkpoints must be > 0)")
    if len(found) < count:
        raise UserError(f"{run_dir} holds only {len(found)} step checkpoints, fewer than the {count} asked for")
    return [str(p) for p in found[-count:]]
