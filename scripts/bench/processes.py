"""Running one benchmark process at a time: its wall time, its peak memory, a training budget.

Every trainer the benchmarks compare (ours, Joey NMT, OpenNMT-py) runs as its own process through
`run_process`, alone on the machine: two trainings sharing two cores would measure the sharing.
"""

from __future__ import annotations

import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("bench")


@dataclass
class Run:
    """What one training or decoding process measured."""

    name: str
    seconds: float = 0.0
    peak_rss_gib: float = 0.0
    tokens_per_s: float | None = None
    updates: int | None = None
    extra: dict = field(default_factory=dict)


def run_process(command: list[str], log_path: Path, budget_s: float | None = None, start_marker=None) -> Run:
    """Run a command alone, logging to a file; its wall time and peak RSS (from wait4).

    With a budget, send SIGINT `budget_s` seconds after `start_marker` (a callable) first says
    training has begun; both trainers save their weights on SIGINT.
    """
    log.info("$ %s", " ".join(map(str, command)))
    started = time.monotonic()
    with open(log_path, "w") as output:
        # A shell's background job starts with SIGINT ignored, and a child would inherit that:
        # restore the default so that both trainers see the budget's SIGINT.
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 (no threads here)
        )
        if budget_s is not None:
            _interrupt_after_budget(process, budget_s, start_marker)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if process.returncode not in (0, 130) and not (budget_s is not None and process.returncode < 0):
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"command failed ({process.returncode}): {' '.join(map(str, command))}\n" + "\n".join(tail))
    return Run(name=Path(command[0]).name, seconds=seconds, peak_rss_gib=usage.ru_maxrss / 2**20)


def _interrupt_after_budget(process: subprocess.Popen, budget_s: float, start_marker) -> None:
    began = None
    while process.poll() is None:
        time.sleep(1.0)
        if began is None and start_marker():
            began = time.monotonic()
            log.info("training began; interrupting in %.0f s", budget_s)
        if began is not None and time.monotonic() - began >= budget_s:
            process.send_signal(signal.SIGINT)
            return


def median_after_first(speeds: list[float]) -> float | None:
    """The median of logged speeds, leaving out the first interval (warm-up) when there are others; None when a
    run logged none (a budget run can end before its first logging interval)."""
    if not speeds:
        return None
    return statistics.median(speeds[1:] or speeds)


def pinned_venv(venv: Path, probe: list[str]) -> tuple[Path, list[str] | None]:
    """A peer's virtual environment, pinned to the torch installed here so that no dependency pulls another:
    its python, and the pip command that installs into it (None when `probe`, run with that python, already
    succeeds: the environment was set up before)."""
    import torch

    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), *probe], capture_output=True, check=False).returncode == 0:
        return python, None
    torch_version = torch.__version__.split("+")[0]
    log.info("Setting up %s with torch %s", venv, torch_version)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv.with_name(f"{venv.name}-constraints.txt")
    constraints.write_text(f"torch=={torch_version}\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints)]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    return python, pip
