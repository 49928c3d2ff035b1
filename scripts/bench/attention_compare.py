#!/usr/bin/env python3
"""The attention variants compared on the bundled corpus: `seq2seq compare`, with provenance, for docs/attention.md.

    python scripts/bench/attention_compare.py --publish     # about 40 minutes on 2 CPU cores

runs the command a user would type,

    seq2seq compare configs/attention-compare.yaml --attention none,dot,...,multihead --budget 4m

into a scratch report directory, then writes its results with the date, the command, the full commit hash
and whether the tree was dirty to OUTPUT.json, and the tables rendered from that JSON to OUTPUT.md. With
--publish (a tree without uncommitted changes only) OUTPUT is docs/attention/comparison, the BLEU-by-length
plot and one test sentence's heatmaps are copied beside it, and docs/attention.md's tables (between their
markers) are rewritten from the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import ROOT, SEQ2SEQ, provenance, replace_between_markers, write_results

from seq2seq.compare import heatmap_sentences, results_tables

VARIANTS = "none,dot,scaled_dot,general,additive,location,multihead"
CONFIG = "configs/attention-compare.yaml"
BUDGET = "4m"
HEATMAP_SENTENCE = 1  # which of compare's heatmap sentences docs/attention.md shows
PUBLISHED = ROOT / "docs" / "attention" / "comparison"
PAGE = ROOT / "docs" / "attention.md"
BEGIN = "<!-- attention comparison: written by scripts/bench/attention_compare.py --publish from docs/attention/comparison.json -->"
END = "<!-- end of attention comparison -->"

log = logging.getLogger("bench")


def run_compare(report: Path, budget: str) -> list[dict]:
    """`seq2seq compare` into `report`; its results.json (one object per variant)."""
    command = [*SEQ2SEQ, "compare", CONFIG, "--attention", VARIANTS, "--budget", budget, "--output", str(report)]
    log.info("Running: %s", " ".join(command[2:]))
    subprocess.run([*command, "--force"], cwd=ROOT, check=True)
    return json.loads((report / "results.json").read_text(encoding="utf-8"))


def heatmap_source() -> str:
    """The test source sentence whose heatmaps docs/attention.md shows (compare's choice, as in its titles)."""
    sources = (ROOT / "data" / "test.es").read_text(encoding="utf-8").splitlines()
    return sources[heatmap_sentences(sources, 3)[HEATMAP_SENTENCE - 1]]


def section(results: dict, plot: str = "attention/bleu_by_length.png") -> str:
    """docs/attention.md's tables, between their markers, from the JSON alone (`plot`: the plot's path from the page)."""
    machine = results["machine"]
    lines = [
        BEGIN,
        (
            f"Measured on {results['date']} on {machine['cpu']} ({machine['cores']} cores, no GPU, torch "
            f"{machine['torch']}), commit {results['commit'][:10]}, by `{results['command']}`, which runs"
        ),
        "",
        "```bash",
        f"seq2seq compare {CONFIG} \\",
        f"    --attention {VARIANTS} --budget {results['budget']}",
        "```",
        "",
        *results_tables(results["variants"]),
    ]
    lines += ["", f"![BLEU by source length]({plot})", "", END]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """OUTPUT.md: the same tables as a page of their own."""
    return f"# Attention variants compared ({results['date']})\n\n{section(results, 'bleu_by_length.png')}\n"


def publish(results: dict, report: Path) -> None:
    """The plot and one sentence's heatmaps beside the JSON, and docs/attention.md's tables rewritten."""
    directory = PUBLISHED.parent
    shutil.copyfile(report / "bleu_by_length.png", directory / "bleu_by_length.png")
    for v in results["variants"]:
        heatmap = report / "heatmaps" / f"sentence{HEATMAP_SENTENCE}-{v['variant']}.png"
        shutil.copyfile(heatmap, directory / f"heatmap-{v['variant']}.png")
    PAGE.write_text(replace_between_markers(PAGE.read_text(encoding="utf-8"), BEGIN, END, section(results)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--publish", action="store_true", help="write docs/attention/comparison.* and the page")
    parser.add_argument("--budget", default=BUDGET, help="training budget per variant (published: 4m only)")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "attention-compare"), help="scratch report directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = provenance(sys.argv)
    if args.publish and (results["dirty"] or args.budget != BUDGET):
        print("attention_compare: --publish needs a clean tree and the default budget", file=sys.stderr)
        return 2
    report = Path(args.work)
    results["budget"] = args.budget
    results["variants"] = run_compare(report, args.budget)
    results["heatmap_source"] = heatmap_source()
    output = PUBLISHED if args.publish else Path(tempfile.mkdtemp(prefix="attention-compare-")) / "comparison"
    write_results(results, output, markdown(results))
    if args.publish:
        publish(results, report)
    log.info("Wrote %s", output.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
