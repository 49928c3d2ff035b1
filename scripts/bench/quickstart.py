#!/usr/bin/env python3
"""The README's first command in a fresh clone, timed, then its best.pt evaluated: the quickstart's figures.

    python scripts/bench/quickstart.py --publish     # about 12 minutes on 2 CPU cores, from a clean tree

Clones this repository at HEAD into a temporary directory and runs, there, exactly the command the
README gives (read from the README, between its "Train the quickstart model" heading and the next
code fence): a fresh virtual environment, the install, SentencePiece, training and validation. Then
`seq2seq evaluate runs/quickstart/best.pt` on the test split, greedy and beam 5. Writes
OUTPUT.json (the run's summary.json, its validation records, its speed, the command's wall time and
peak memory, both evaluation reports, the full commit hash) and OUTPUT.md; with --publish (a clean
tree only) OUTPUT is docs/quickstart and the README's quickstart table is rewritten from the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import (
    ROOT,
    dirty_publish_refused,
    mean_speed,
    provenance,
    records,
    replace_between_markers,
    write_results,
)

README = ROOT / "README.md"
BEGIN = "<!-- quickstart table: written by scripts/bench/quickstart.py --publish from docs/quickstart.json -->"
END = "<!-- end of quickstart table -->"
log = logging.getLogger("bench")


def readme_command(readme: str) -> str:
    """The shell command of the README's 'Train the quickstart model' block."""
    section = readme[readme.index("**Train the quickstart model") :]
    match = re.search(r"```bash\n(.+?)\n```", section, re.DOTALL)
    if match is None:
        raise SystemExit("quickstart.py: the README has no bash block after 'Train the quickstart model'")
    return match.group(1).strip()


def run_command(command: str, clone: Path) -> dict:
    """Run the README command in the clone: wall seconds and the peak RSS of its largest process."""
    log.info("In %s: %s", clone, command)
    started = time.monotonic()
    with open(clone / "quickstart.log", "w") as output:
        process = subprocess.Popen(["bash", "-c", command], cwd=clone, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (clone / "quickstart.log").read_text(errors="replace").splitlines()[-15:]
        raise SystemExit("quickstart.py: the README command failed:\n" + "\n".join(tail))
    return {"wall_seconds": time.monotonic() - started, "peak_rss_gib": usage.ru_maxrss / 2**20}


def evaluate(clone: Path, beam: int) -> dict:
    """`seq2seq evaluate runs/quickstart/best.pt --beam BEAM` on the test split, in the clone: its report."""
    report = clone / f"test-beam{beam}.json"
    command = [str(clone / ".venv" / "bin" / "seq2seq"), "evaluate", "runs/quickstart/best.pt", "--beam", str(beam)]
    subprocess.run([*command, "--report", str(report)], cwd=clone, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def measure(clone: Path) -> dict:
    """Clone, run the README command, evaluate: every figure of the quickstart table."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    command = readme_command(README.read_text(encoding="utf-8"))
    figures = {"readme_command": command, **run_command(command, clone)}
    run_dir = clone / "runs" / "quickstart"
    figures["summary"] = json.loads((run_dir / "summary.json").read_text())
    figures["validations"] = [
        {"step": r["step"], "dev_bleu": r["dev_bleu"]} for r in records(run_dir / "metrics.jsonl") if "dev_bleu" in r
    ]
    figures["tokens_per_s"] = mean_speed(run_dir)
    figures["test"] = {f"beam{beam}": evaluate(clone, beam) for beam in (1, 5)}
    return figures


def readme_table(results: dict) -> str:
    """The README's quickstart table, between its markers, from the JSON alone."""
    summary, test = results["summary"], results["test"]
    curve = ", ".join(f"{v['dev_bleu']:.2f}" for v in results["validations"])
    minutes, seconds = divmod(round(results["wall_seconds"]), 60)
    rows = [
        (
            "dev BLEU (whole dev set, 976 verses, greedy, sacreBLEU on detokenized text)",
            (
                f"**{summary['best_dev_bleu']:.2f}** at update {summary['best_step']:,} "
                f"(validations: {curve}; {summary['steps']:,} updates in all)"
            ),
        ),
        (
            "the whole command, wall clock (venv, install, SentencePiece, training, validation)",
            f"{minutes} min {seconds} s",
        ),
        ("peak resident memory", f"{results['peak_rss_gib']:.2f} GiB"),
        ("training speed", f"{results['tokens_per_s']:,.0f} target tokens/s (harmonic mean of the logged intervals)"),
    ]
    for beam, label in ((1, "greedy (`--beam 1`)"), (5, "beam 5, alpha 1.0")):
        report = test[f"beam{beam}"]
        rows.append(
            (
                f"test BLEU / chrF, {label}",
                f"{report['bleu']:.2f} / {report['chrf']:.2f}, {report['sentences_per_s']:.0f} sentences/s",
            )
        )
    lines = [
        BEGIN,
        "",
        (
            f"Measured with `scripts/bench/quickstart.py` in a fresh clone on {results['machine']['cpu']} "
            f"({results['machine']['cores']} cores), {results['date']}, commit {results['commit'][:10]} "
            "(every figure in `docs/quickstart.json`); the test figures are from that run's `best.pt`:"
        ),
        "",
        "| figure | value |",
        "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        END,
    ]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """docs/quickstart.md: the command and the table, from the JSON alone."""
    return "\n".join(
        [
            f"# The quickstart in a fresh clone ({results['date']})",
            "",
            f"Command (from the README): `{results['readme_command']}`",
            "",
            readme_table(results),
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--publish", action="store_true", help="write docs/quickstart.{json,md} and the README table")
    parser.add_argument("--output", default=str(ROOT / ".cache" / "bench" / "quickstart"), help="without --publish")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = provenance(sys.argv)
    if args.publish and dirty_publish_refused("quickstart.py", results):
        return 2
    with tempfile.TemporaryDirectory(prefix="quickstart-") as scratch:
        results.update(measure(Path(scratch) / "clone"))
    output = ROOT / "docs" / "quickstart" if args.publish else Path(args.output)
    write_results(results, output, markdown(results))
    if args.publish:
        README.write_text(
            replace_between_markers(README.read_text(encoding="utf-8"), BEGIN, END, readme_table(results))
        )
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
