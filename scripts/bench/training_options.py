#!/usr/bin/env python3
"""Subword sampling and weight averaging against the plain quickstart, at an equal time budget.

    python scripts/bench/training_options.py            # 4 runs of 8 minutes, about 40 minutes on 2 CPU cores

Runs configs/quickstart.yaml as it is (`baseline`) and with one option turned on per run, one run after
another: `sampling` (tokenizer.sampling {alpha: 0.1, nbest: -1}, the setting SentencePiece's
documentation shows; segmentations then are ~1.6x as long), `sampling, alpha 0.3` (a milder
smoothing, ~1.1x as long), both segmented in one DataLoader worker process, and `ema`
(train.ema_decay 0.999). Every run gets the same train.max_time. For each: the
training speed (target pieces per second: sampled segmentations are longer, so pieces per second are
also given as source-sentence pairs per second), updates and epochs done, the best greedy dev BLEU seen
during training, and the test BLEU of best.pt with beam 5 (`seq2seq evaluate`). Ratios are against
the baseline of the same invocation. Writes OUTPUT.json (with the full commit hash and whether the tree
was dirty) and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import ROOT, evaluate, mean_speed, provenance, records, train, write_results

CONFIG = "configs/quickstart.yaml"
VARIANTS = {
    "baseline": [],
    "sampling": ["tokenizer.sampling={alpha: 0.1, nbest: -1}"],
    "sampling, alpha 0.3": ["tokenizer.sampling={alpha: 0.3, nbest: -1}"],
    "ema": ["train.ema_decay=0.999"],
}

log = logging.getLogger("bench")


def measure_run(name: str, settings: list[str], work_dir: Path, budget: str) -> dict:
    """One training run with `settings` on top of the quickstart config, and its figures."""
    run_dir = work_dir / name
    summary = train(CONFIG, run_dir, [*settings, f"train.max_time={budget}", f"data.cache_dir={work_dir / 'cache'}"])
    result = {
        "settings": settings,
        "minutes": summary["minutes"],
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "target_pieces_per_s": mean_speed(run_dir),
        "pairs_per_s": mean_speed(run_dir, "sentences_per_s"),
        "best_dev_bleu_greedy": summary["best_dev_bleu"],
        "best_step": summary["best_step"],
        "dev_bleu_curve": [(m["step"], m["dev_bleu"]) for m in records(run_dir / "metrics.jsonl")],
        "test": evaluate(run_dir / "best.pt", ROOT / "data" / "test.es", ROOT / "data" / "test.en"),
    }
    log.info("%s: %s", name, result)
    return result


def markdown(results: dict) -> str:
    """The table the README quotes."""
    runs = results["runs"]
    lines = [
        f"# Subword sampling and weight averaging at equal time ({results['date']}, commit {results['commit']})",
        "",
        (
            f"`{results['config']}` with `train.max_time={results['budget']}` for every run, on "
            f"{results['machine']['cpu']} ({results['machine']['cores']} cores), one run after another. Speeds are "
            "target pieces per second (sampled segmentations are longer, so pairs per second of training are "
            "given too); dev BLEU is greedy, as validation decodes; test BLEU is best.pt's with beam 5."
        ),
        "",
        "| run | settings | target pieces/s | pairs/s | updates | epochs | best dev BLEU | test BLEU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {name} | {'; '.join(f'`{s}`' for s in run['settings']) or 'quickstart'} | "
            f"{run['target_pieces_per_s']:,.0f} | {run['pairs_per_s']:.1f} | {run['steps']:,} | {run['epochs']} | "
            f"{run['best_dev_bleu_greedy']:.2f} | {run['test']['bleu']:.2f} |"
            for name, run in runs.items()
        ),
        "",
        "| ratio against the baseline | value |",
        "| --- | ---: |",
        *(f"| {key} | {value} |" for key, value in results["ratios"].items()),
        "",
        (
            "The runs shared the cores with nothing else, yet the machine's speed drifts between runs: the moving "
            "average adds work to every update, but its run trained "
            f"{results['ratios'].get('ema: target pieces/s', 'n/a')}x as fast as the baseline. An 8-minute budget "
            "therefore buys each run a different number of updates; here is the greedy dev BLEU of each "
            "validation, by update:"
        ),
        "",
        *curve_table(runs),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def curve_table(runs: dict) -> list[str]:
    """Markdown rows: dev BLEU of each run at each validation step (blank where a run did not validate)."""
    curves = {name: dict(run["dev_bleu_curve"]) for name, run in runs.items()}
    steps = sorted({step for curve in curves.values() for step in curve})
    header = ["| update | " + " | ".join(curves) + " |", "| ---: |" + " ---: |" * len(curves)]
    rows = [
        f"| {step:,} | " + " | ".join(f"{curve[step]:.2f}" if step in curve else "" for curve in curves.values()) + " |"
        for step in steps
    ]
    return header + rows


def ratios(runs: dict) -> dict:
    """Speeds and BLEU of each variant against the baseline."""
    base = runs["baseline"]
    found: dict[str, float | None] = {}
    for name, run in runs.items():
        if name == "baseline":
            continue
        for key, label in (("target_pieces_per_s", "target pieces/s"), ("pairs_per_s", "pairs/s")):
            found[f"{name}: {label}"] = round(run[key] / base[key], 2) if base[key] else None
        found[f"{name}: best dev BLEU difference"] = round(
            run["best_dev_bleu_greedy"] - base["best_dev_bleu_greedy"], 2
        )
        found[f"{name}: test BLEU difference"] = round(run["test"]["bleu"] - base["test"]["bleu"], 2)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="8m", help="train.max_time of every run")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="run only these (baseline is always run)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "training-options"), help="caches and runs")
    parser.add_argument(
        "--output", default=str(ROOT / "docs" / "training_options"), help="writes OUTPUT.json and OUTPUT.md"
    )
    parser.add_argument("--render", action="store_true", help="only write OUTPUT.md again from OUTPUT.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.render:
        Path(args.output).with_suffix(".md").write_text(
            markdown(json.loads(Path(args.output).with_suffix(".json").read_text()))
        )
        return 0
    chosen = {"baseline"} | set(args.only or VARIANTS)
    results = provenance(sys.argv) | {"config": CONFIG, "budget": args.budget}
    results["runs"] = {
        name: measure_run(name, settings, Path(args.work_dir), args.budget)
        for name, settings in VARIANTS.items()
        if name in chosen
    }
    results["ratios"] = ratios(results["runs"])
    write_results(results, Path(args.output), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
