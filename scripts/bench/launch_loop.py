"""Many two-process torchrun launches under the load of the full test suite: does any abort?

    python scripts/bench/launch_loop.py [--launches 40] [--no-load]

Once, on one machine, about one full-suite run in five had a process of a two-process torchrun launch
die during set-up with "terminate called without an active exception" (exit -6). This script repeats
the launch that the suite makes (tests/test_distributed.py: two gloo processes train the toy model
for six updates) `--launches` times in a row, while the full test suite runs beside it, again and
again, as the load. Each launch runs with faulthandler, C++ stack traces and core dumps allowed; a
failed one keeps its output, and gdb's backtrace of any core file goes into the results.

Writes docs/launch_loop.json and docs/launch_loop.md (the figures docs/reliability.md quotes).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import experiments
from experiments import ROOT, log

sys.path.insert(0, str(ROOT / "tests"))
from helpers import STANDALONE, core_backtrace, start_torchrun, two_process_config, write_yaml

ABORT = "terminate called"


def one_launch(directory: Path) -> dict:
    """One `torchrun --nproc_per_node 2 -m seq2seq train` of the suite's toy run; its status, time and, if it
    failed, its evidence (output, gdb's backtraces of its core files)."""
    config = Path(write_yaml(directory / "config.yaml", two_process_config(directory, "run")))
    folder = directory / "launch"
    started = time.monotonic()
    process = start_torchrun(folder, STANDALONE, config)
    try:
        status = process.wait(timeout=600)
    finally:
        process.kill()  # a no-op once it has exited
    result = {"status": status, "seconds": round(time.monotonic() - started, 2)}
    output = "".join((folder / name).read_text(encoding="utf-8", errors="replace") for name in ("stdout", "stderr"))
    result["abort"] = ABORT in output
    if status != 0:
        result["output_tail"] = output[-6000:]
        result["backtraces"] = [core_backtrace(core)[-8000:] for core in sorted(folder.glob("core*"))]
    return result


class SuiteLoad:
    """The full test suite, started again each time it ends, until stopped."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.runs, self.process = log_dir, [], None

    def poll(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self.runs.append({"status": self.process.returncode, "seconds": round(time.monotonic() - self.started, 1)})
        output = open(self.log_dir / f"suite-{len(self.runs) + 1}.log", "w")  # noqa: SIM115 (the child owns it)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            self.runs.append({"status": "stopped (the launches were done)"})


def markdown(results: dict) -> str:
    summary = results["launches"]
    lines = [
        f"# torchrun launches under load ({results['date']}, commit {results['commit']})",
        "",
        f"Command: `{results['command']}`; machine: {results['machine']['cpu']}, {results['machine']['cores']} cores.",
        "",
        '| launches | exited 0 | failed | aborted ("terminate called") | load: full-suite runs beside them |',
        "| ---: | ---: | ---: | ---: | ---: |",
        (
            f"| {summary['total']} | {summary['ok']} | {summary['failed']} | {summary['aborted']} | "
            f"{len(results['load'])} |"
        ),
        "",
        f"Launch time: median {summary['median_seconds']} s, slowest {summary['max_seconds']} s.",
    ]
    for number, failure in enumerate(results["failures"], start=1):
        lines += ["", f"## Failure {number} (launch {failure['launch']}, status {failure['status']})", ""]
        lines += ["```", failure["output_tail"][-3000:], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=40)
    parser.add_argument("--no-load", action="store_true", help="launch alone, without the suite beside")
    parser.add_argument("--output", default=str(ROOT / "docs" / "launch_loop"), help="writes OUTPUT.json and .md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = experiments.provenance(sys.argv)
    output = Path(args.output)
    if results["dirty"] or args.launches < 40:  # docs/ holds only full runs of committed code
        output = Path(tempfile.mkdtemp(prefix="launch-loop-results-")) / output.name
        log.warning("Not publishing to docs/ (uncommitted changes or fewer than 40 launches): writing %s", output)
    workspace = Path(tempfile.mkdtemp(prefix="launch-loop-"))
    load = None if args.no_load else SuiteLoad(workspace)
    launches = []
    try:
        for number in range(1, args.launches + 1):
            if load is not None:
                load.poll()
            directory = workspace / f"launch-{number:03d}"
            directory.mkdir()
            result = one_launch(directory)
            launches.append(result)
            log.info("launch %d/%d: status %d in %.1f s", number, args.launches, result["status"], result["seconds"])
            if result["status"] == 0:
                shutil.rmtree(directory)
    finally:
        if load is not None:
            load.stop()
    seconds = sorted(result["seconds"] for result in launches)
    results["launches"] = {
        "total": len(launches),
        "ok": sum(result["status"] == 0 for result in launches),
        "failed": sum(result["status"] != 0 for result in launches),
        "aborted": sum(result["abort"] for result in launches),
        "median_seconds": seconds[len(seconds) // 2],
        "max_seconds": seconds[-1],
    }
    results["failures"] = [{"launch": n} | r for n, r in enumerate(launches, start=1) if r["status"] != 0]
    results["load"] = load.runs if load is not None else []
    experiments.write_results(results, output, markdown(results))
    print(json.dumps(results["launches"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
