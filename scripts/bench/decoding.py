#!/usr/bin/env python3
"""Ensembles against weight averaging and the best single checkpoint; scoring against greedy decoding.

    python scripts/bench/decoding.py --run runs/quickstart            # after `seq2seq train configs/quickstart.yaml`

On the run's test split (the config's data.test), one measurement after another in this process:
1. the best checkpoint alone, and each of the last `--last` step checkpoints alone (beam 5);
2. the last 2, 3, ... `--last` step checkpoints as an ensemble (equal weights), and their weight
   average (`seq2seq average`);
3. scoring the references with the best checkpoint against greedy decoding of the same sources.
BLEU is sacreBLEU's on detokenized text; speeds are sentences per second of decoding (model
loading excluded); an ensemble's speed is compared with the mean speed of its members decoding alone
in the same run (the same model measured twice here differed by up to 10%). Writes OUTPUT.json (with the full commit hash and whether the tree was dirty)
and OUTPUT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from experiments import commit

from seq2seq.checkpoint import average_checkpoints
from seq2seq.config import DecodeConfig
from seq2seq.data import read_parallel
from seq2seq.ensemble import load_ensemble
from seq2seq.metrics import bleu
from seq2seq.rundir import RunDir
from seq2seq.score import score_lines
from seq2seq.search import decode_lines

log = logging.getLogger("bench")
CPU = torch.device("cpu")


def decode_run(paths: list[Path], sources: list[str], references: list[str], options: DecodeConfig) -> dict:
    """Decode the test set with checkpoint(s): BLEU and sentences per second."""
    loaded = load_ensemble([str(p) for p in paths], CPU)
    started = time.perf_counter()
    found = decode_lines(loaded.ensemble, loaded.tokenizer, sources, CPU, options)
    seconds = time.perf_counter() - started
    texts = [loaded.tokenizer.decode_tgt(best[0].ids) for best in found]
    result = {
        "checkpoints": [str(p) for p in paths],
        "bleu": round(bleu(texts, references).value, 2),
        "sentences_per_s": round(len(sources) / seconds, 1),
    }
    log.info("%s: %s", [p.name for p in paths], result)
    return result


def score_run(path: Path, sources: list[str], references: list[str], batch_tokens: int) -> dict:
    """Score the references given the sources: sentences per second."""
    loaded = load_ensemble(str(path), CPU)
    started = time.perf_counter()
    score_lines(loaded.ensemble, loaded.tokenizer, sources, references, CPU, batch_tokens)
    return {"checkpoint": str(path), "sentences_per_s": round(len(sources) / (time.perf_counter() - started), 1)}


def measure(run_dir: RunDir, last: int) -> dict:
    """Every measurement of the module docstring, for the run's test split."""
    best = load_ensemble(str(run_dir.best), CPU)
    data = best.config.data
    sources, references, _ = read_parallel(data.test, data.src_lang, data.tgt_lang)
    beam = best.config.decode
    greedy = DecodeConfig(beam=1, batch_tokens=beam.batch_tokens, max_src_length=beam.max_src_length)
    steps = run_dir.newest_step_checkpoints(last)
    results: dict = {"test_sentences": len(sources), "beam": beam.beam, "alpha": beam.alpha}
    results["best_single"] = decode_run([run_dir.best], sources, references, beam)
    results["step_singles"] = [decode_run([path], sources, references, beam) for path in steps]
    results["ensembles"], results["averages"] = [], []
    for count in range(2, last + 1):
        newest = steps[-count:]
        results["ensembles"].append(decode_run(newest, sources, references, beam))
        with tempfile.TemporaryDirectory() as scratch:
            averaged = Path(scratch) / "average.pt"
            average_checkpoints([str(p) for p in newest], str(averaged))
            results["averages"].append(decode_run([averaged], sources, references, beam))
        results["averages"][-1]["checkpoints"] = [f"average of {', '.join(p.name for p in newest)}"]
    results["greedy_best"] = decode_run([run_dir.best], sources, references, greedy)
    results["score_best"] = score_run(run_dir.best, sources, references, beam.batch_tokens)
    single, pair = results["best_single"], results["ensembles"][0]
    members = [r["sentences_per_s"] for r in results["step_singles"][-2:]]  # the pair's checkpoints, each alone
    results["ratios"] = {
        "ensemble_of_2_speed_vs_its_members_alone": round(pair["sentences_per_s"] / (sum(members) / 2), 3),
        "score_speed_vs_greedy": round(
            results["score_best"]["sentences_per_s"] / results["greedy_best"]["sentences_per_s"], 3
        ),
    }
    for ensemble, average in zip(results["ensembles"], results["averages"]):
        count = len(ensemble["checkpoints"])
        results["ratios"][f"ensemble_of_{count}_bleu_minus_best_single"] = round(ensemble["bleu"] - single["bleu"], 2)
        results["ratios"][f"ensemble_of_{count}_bleu_minus_average"] = round(ensemble["bleu"] - average["bleu"], 2)
    return results


def markdown(results: dict) -> str:
    """The table the README quotes."""
    rows = [
        ("best checkpoint alone", results["best_single"]),
        *((f"{Path(r['checkpoints'][0]).name} alone", r) for r in results["step_singles"]),
    ]
    for ensemble, average in zip(results["ensembles"], results["averages"]):
        names = ", ".join(Path(p).name for p in ensemble["checkpoints"])
        rows += [(f"ensemble of {names}", ensemble), ("their weight average (`seq2seq average`)", average)]
    lines = [
        f"# Ensembles, averaging and scoring ({results['date']}, commit {results['commit']})",
        "",
        (
            f"Test split, {results['test_sentences']} sentences, beam {results['beam']} (alpha {results['alpha']}), "
            f"{results['machine']}."
        ),
        "",
        "| decoding with | test BLEU | sentences/s |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {r['bleu']:.2f} | {r['sentences_per_s']:.1f} |" for name, r in rows),
        "",
        (
            f"Scoring the references: {results['score_best']['sentences_per_s']:.1f} sentences/s; greedy decoding of the "
            f"same sources: {results['greedy_best']['sentences_per_s']:.1f} sentences/s."
        ),
        "",
        "| ratio | value |",
        "| --- | ---: |",
        *(f"| {k} | {v} |" for k, v in results["ratios"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "quickstart"), help="a finished run directory")
    parser.add_argument(
        "--last", type=int, default=3, help="ensembles and averages of the last 2 ... N step checkpoints"
    )
    parser.add_argument("--output", default=str(ROOT / "docs" / "decoding"), help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
        **commit(),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
    }
    results.update(measure(RunDir(args.run), args.last))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
