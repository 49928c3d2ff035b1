"""What the training experiments in scripts/bench share: provenance, `seq2seq train` / `evaluate` runs, records.

Each experiment runs the command line a user would type, one run after another (never two at once:
they would share the cores), and reads the figures back from the files the runs wrote.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEQ2SEQ = [sys.executable, "-m", "seq2seq"]

log = logging.getLogger("bench")


def commit() -> dict:
    """The full commit hash of this tree and whether it had uncommitted changes (where git cannot tell, dirty)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False)
    unknown = head.returncode != 0 or status.returncode != 0
    return {"commit": head.stdout.strip() or None, "dirty": bool(status.stdout.strip()) or unknown}


def provenance(argv: list[str]) -> dict:
    """The date, the command, the full commit hash, whether the tree had uncommitted changes, and the machine."""
    import torch

    return {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", *argv]),
        **commit(),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train(config: str, run_dir: Path, settings: list[str], extra: list[str] = ()) -> dict:
    """`seq2seq train CONFIG --set train.run_dir=RUN_DIR --set ... --force`; returns summary.json plus wall time."""
    command = [*SEQ2SEQ, "train", config, "--set", f"train.run_dir={run_dir}", "--force", *extra]
    for setting in settings:
        command += ["--set", setting]
    log.info("Running: %s", " ".join(command[2:]))
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["wall_minutes"] = round((time.monotonic() - started) / 60, 2)
    return summary


def evaluate(checkpoint: Path, src: Path, ref: Path, beam: int = 5) -> dict:
    """BLEU and chrF of `checkpoint` on src/ref with beam search (`seq2seq evaluate`), and decoding seconds."""
    report = checkpoint.with_name(f"{checkpoint.stem}.{src.stem}.beam{beam}.json")
    command = [*SEQ2SEQ, "evaluate", str(checkpoint), "--src", str(src), "--ref", str(ref), "--beam", str(beam)]
    command += ["--report", str(report), "--output", str(report.with_suffix(".hyp")), "--device", "cpu"]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads(report.read_text())
    return {"bleu": round(result["bleu"], 2), "chrf": round(result["chrf"], 2), "signature": result["bleu_signature"]}


def records(path: Path) -> list[dict]:
    """The JSON-lines records of a run file (progress.jsonl, metrics.jsonl)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_speed(run_dir: Path, key: str = "tokens_per_s") -> float:
    """Training speed over the run (`key`: tokens_per_s, target pieces, or sentences_per_s): the harmonic mean of
    the progress records' speeds (each record covers the same number of updates of about the same size;
    validation excluded), leaving out the first record (start-up)."""
    rates = [record[key] for record in records(run_dir / "progress.jsonl")[1:]]
    return round(len(rates) / sum(1 / rate for rate in rates), 1) if rates else 0.0


def dirty_publish_refused(script: str, results: dict) -> bool:
    """True, after one line on stderr, when a --publish run starts from a tree with uncommitted changes (what
    docs/ holds must come from committed code)."""
    if results["dirty"]:
        print(f"{script}: --publish needs a tree without uncommitted changes: commit first", file=sys.stderr)
    return results["dirty"]


def write_results(results: dict, output: Path, markdown: str) -> None:
    """OUTPUT.json and OUTPUT.md, as written (never edited by hand); a warning when the tree was dirty at the start
    (the committed docs must come from a clean tree: commit one script's output before starting the next)."""
    if results["dirty"]:
        log.warning("The tree had uncommitted changes when this started: commit, then run again to publish")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown)


def replace_between_markers(text: str, begin: str, end: str, section: str) -> str:
    """`text` with the part from `begin` to `end` (both markers included) replaced by `section`."""
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + section + text[stop:]
