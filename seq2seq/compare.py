"""Compare attention variants: one model per variant, everything else equal, one report.

The report directory holds report.md (a table per variant: parameters, dev/test BLEU, chrF,
training tokens/s, decoding sentences/s), bleu_by_length.png (test BLEU per source-length bucket
for every variant), and heatmaps/ (the attention of the same test sentences under each variant).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from seq2seq.attention import ATTENTION_TYPES
from seq2seq.checkpoint import load_trained
from seq2seq.config import Config, config_from_dict, config_to_dict, parse_duration
from seq2seq.data import read_parallel
from seq2seq.device import resolve_device
from seq2seq.errors import UserError
from seq2seq.metrics import bleu, chrf
from seq2seq.model import count_parameters
from seq2seq.plots import plot_attention, plot_bleu_by_length
from seq2seq.rundir import RunDir, read_records
from seq2seq.search import attention_view, decode_lines
from seq2seq.train import train

log = logging.getLogger(__name__)

LENGTH_BUCKETS = [(1, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 10_000)]


@dataclass
class VariantResult:
    """What one variant achieved."""

    variant: str
    parameters: int
    steps: int
    dev_bleu: float
    test_bleu: float
    test_chrf: float
    train_tokens_per_s: float
    decode_sentences_per_s: float
    bleu_by_length: dict[str, float | None]


def parse_budget(budget: str) -> dict:
    """'20m' / '90s' / '1h' -> a wall-clock limit; '500' or '500 steps' -> a step limit."""
    steps = re.fullmatch(r"\s*(\d+)\s*(steps?)?\s*", budget)
    if steps:
        return {"max_steps": int(steps.group(1)), "max_time": None}
    parse_duration(budget, key="--budget")
    return {"max_time": budget, "max_steps": None}


def variant_configs(base: Config, variants: list[str], budget: str, output: Path) -> dict[str, Config]:
    """One config per variant: the base config with only the attention, budget and run directory changed.

    The base's attention options are kept for its own type; every other variant gets its defaults.
    """
    unknown = [v for v in variants if v not in ATTENTION_TYPES]
    if unknown:
        raise UserError(f"unknown attention variant(s) {', '.join(unknown)}: choose from {', '.join(ATTENTION_TYPES)}")
    if not base.data.test or not base.data.dev:
        raise UserError("compare needs data.dev and data.test in the config")
    limits = parse_budget(budget)
    configs = {}
    for variant in variants:
        data = config_to_dict(base)
        if variant != base.model.attention.type:
            data["model"]["attention"] = {"type": variant}  # that variant's own options at their defaults
        data["train"].update(
            limits, max_epochs=None, early_stopping_patience=None, run_dir=str(output / "runs" / variant)
        )
        configs[variant] = config_from_dict(data)  # validates the attention too: fails before any training
    return configs


def source_length_bucket(source: str) -> str:
    """The label of the length bucket (in words) a source sentence falls in."""
    words = len(source.split())
    for low, high in LENGTH_BUCKETS:
        if low <= words <= high:
            return f"{low}-{high}" if high < 10_000 else f"{low}+"
    return f"{LENGTH_BUCKETS[0][0]}-{LENGTH_BUCKETS[0][1]}"  # empty lines


def bleu_by_length(sources: list[str], hypotheses: list[str], references: list[str]) -> dict[str, float | None]:
    """Corpus BLEU of the sentences in each source-length bucket (None for an empty bucket)."""
    buckets: dict[str, tuple[list[str], list[str]]] = {}
    for low, high in LENGTH_BUCKETS:
        buckets[f"{low}-{high}" if high < 10_000 else f"{low}+"] = ([], [])
    for source, hypothesis, reference in zip(sources, hypotheses, references):
        hyps, refs = buckets[source_length_bucket(source)]
        hyps.append(hypothesis)
        refs.append(reference)
    return {label: (bleu(h, r).value if h else None) for label, (h, r) in buckets.items()}


def heatmap_sentences(sources: list[str], count: int) -> list[int]:
    """Indices of `count` test sentences of 8 to 25 words, spread over the set."""
    candidates = [i for i, s in enumerate(sources) if 8 <= len(s.split()) <= 25]
    if not candidates:
        candidates = [i for i, s in enumerate(sources) if s.strip()]
    step = max(1, len(candidates) // max(count, 1))
    return candidates[::step][:count]


def median_tokens_per_second(run_dir: RunDir) -> float:
    """The median training speed over the run's logged intervals."""
    speeds = [p["tokens_per_s"] for p in read_records(run_dir.progress)]
    return statistics.median(speeds) if speeds else 0.0


def evaluate_variant(
    variant: str,
    config: Config,
    summary: dict,
    test: tuple[list[str], list[str]],
    beam: int,
    heatmap_indices: list[int],
    heatmap_dir: Path,
) -> VariantResult:
    """Test-set scores, speeds and heatmaps of one trained variant."""
    device = resolve_device(config.train.device, "train.device")
    run_dir = RunDir(config.train.run_dir)
    trained = load_trained(run_dir.best, device)
    tokenizer = trained.tokenizer
    # As in validation: training's batch size and no truncation, so every variant sees whole sentences.
    options = dataclasses.replace(
        config.decode, beam=beam, n_best=1, batch_tokens=config.train.batch_tokens, max_src_length=None
    )
    sources, references = test
    started = time.perf_counter()
    found = decode_lines(trained.model, tokenizer, sources, device, options)
    seconds = time.perf_counter() - started
    texts = [tokenizer.decode_tgt(best[0].ids) for best in found]
    run_dir.test_hypotheses.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    for number, index in enumerate(heatmap_indices, start=1):
        hypothesis = found[index][0]
        plot_attention(
            *attention_view(tokenizer, tokenizer.encode_src([sources[index]])[0], hypothesis),
            heatmap_dir / f"sentence{number}-{variant}.png",
            title=f"{variant}: {sources[index]}",
        )
    return VariantResult(
        variant=variant,
        parameters=count_parameters(trained.model),
        steps=summary["steps"],
        dev_bleu=summary["best_dev_bleu"],
        test_bleu=round(bleu(texts, references).value, 2),
        test_chrf=round(chrf(texts, references).value, 2),
        train_tokens_per_s=round(median_tokens_per_second(run_dir)),
        decode_sentences_per_s=round(len(sources) / seconds, 1),
        bleu_by_length=bleu_by_length(sources, texts, references),
    )


def results_tables(rows: list[dict]) -> list[str]:
    """The per-variant table and the test-BLEU-by-source-length table as Markdown lines (rows: VariantResult's
    fields, as results.json holds them)."""
    lines = [
        "| variant | parameters | updates | dev BLEU | test BLEU | test chrF | train tokens/s | decode sentences/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['parameters']:,} | {r['steps']} | {r['dev_bleu']:.2f} | {r['test_bleu']:.2f} "
            f"| {r['test_chrf']:.2f} | {r['train_tokens_per_s']:,.0f} | {r['decode_sentences_per_s']:.1f} |"
        )
    labels = list(rows[0]["bleu_by_length"]) if rows else []
    lines += [
        "",
        "Test BLEU by source length (words):",
        "",
        "| variant | " + " | ".join(labels) + " |",
        "| --- |" + " ---: |" * len(labels),
    ]
    for r in rows:
        cells = " | ".join("–" if v is None else f"{v:.2f}" for v in r["bleu_by_length"].values())
        lines.append(f"| {r['variant']} | {cells} |")
    return lines


def write_report(results: list[VariantResult], output: Path, budget: str, beam: int, base: Config) -> Path:
    """report.md and results.json in `output`."""
    lines = [
        "# Attention variants compared",
        "",
        (
            f"Same data, vocabulary, seed and model sizes; training budget {budget} each; test decoding "
            f"{'greedy' if beam == 1 else f'beam {beam}'}; BLEU and chrF by sacreBLEU on detokenized text."
        ),
        f"Corpus: {base.data.train} ({base.data.src_lang}->{base.data.tgt_lang}); dev {base.data.dev}; test {base.data.test}.",
        "",
        *results_tables([vars(r) for r in results]),
    ]
    lines += ["", "![BLEU by source length](bleu_by_length.png)", ""]
    path = output / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (output / "results.json").write_text(json.dumps([vars(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return path


def compare(
    base: Config, variants: list[str], budget: str, output: Path, beam: int = 1, heatmaps: int = 3, force: bool = False
) -> list[VariantResult]:
    """Train and evaluate one model per attention variant; write the report into `output`."""
    if beam < 1:
        raise UserError(f"--beam must be 1 or more, got {beam}")
    configs = variant_configs(base, variants, budget, output)
    assert base.data.test is not None  # variant_configs checked it
    test_src, test_ref, _ = read_parallel(base.data.test, base.data.src_lang, base.data.tgt_lang)
    indices = heatmap_sentences(test_src, heatmaps)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for number, (variant, config) in enumerate(configs.items(), start=1):
        log.info("=== Variant %d of %d: %s (budget %s) ===", number, len(configs), variant, budget)
        summary = train(copy.deepcopy(config), force=force)
        if summary["interrupted"]:
            raise KeyboardInterrupt  # Ctrl-C stops the whole comparison, not just this variant
        results.append(
            evaluate_variant(variant, config, summary, (test_src, test_ref), beam, indices, output / "heatmaps")
        )
        log.info("%s: dev BLEU %.2f, test BLEU %.2f", variant, results[-1].dev_bleu, results[-1].test_bleu)
    plot_bleu_by_length({r.variant: r.bleu_by_length for r in results}, output / "bleu_by_length.png")
    report = write_report(results, output, budget, beam, base)
    log.info("Comparison written to %s", report)
    return results
