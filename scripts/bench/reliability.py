"""The reliability record: each fault injected and each class of bad input, with the cases tried and what survived.

    python scripts/bench/reliability.py

Runs the tests that inject the faults and feed the bad input (one pytest run, with hypothesis's statistics),
counts per row the test cases that ran and passed (for property-based rows: the examples hypothesis
generated and the ones that passed), and adds the torchrun launch loop from docs/launch_loop.json
(scripts/bench/launch_loop.py). Writes docs/reliability.json and docs/reliability.md; a tree with
uncommitted changes writes to a temporary folder instead (docs/ holds only results of committed code).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import experiments
from experiments import ROOT, log


@dataclass(frozen=True)
class Row:
    """One line of the record: the tests (node ids matching `tests`) and what they check survives."""

    kind: str  # "fault" or "bad input"
    what: str
    tests: str  # a regular expression over node ids ("test_file.py::test_name[case]"), matched at the start
    survives: str

    @property
    def files(self) -> list[str]:
        """The test files the row's expression names."""
        return [name.replace("\\", "") for name in re.findall(r"test_\w+\\\.py", self.tests)]


ROWS = [
    Row(
        "fault",
        "`kill -9` mid-run, then `--resume`",
        r"test_scenarios\.py::test_kill_9_then_resume",
        "bitwise the weights of an uninterrupted run",
    ),
    Row(
        "fault",
        "`kill -9` half way through writing last.pt",
        r"test_scenarios\.py::test_(crash_while_saving|resume_after_a_crash)",
        "the previous last.pt, whole; the resumed run equals an uninterrupted one; each step recorded once",
    ),
    Row(
        "fault",
        "SIGTERM / Ctrl-C mid-run",
        r"test_scenarios\.py::test_signal_saves",
        "a checkpoint at the current step and the line that says how to resume",
    ),
    Row(
        "fault",
        "a second Ctrl-C",
        r"test_claims\.py::test_(second_ctrl_c|first_signal)",
        "the run quits at once: exit status 130, one line, no temporary file left",
    ),
    Row(
        "fault",
        "Ctrl-C under each learning-rate schedule, at a plain step and at a validation step, then `--resume`",
        r"test_claims\.py::test_(schedule_survives|plateau_survives)",
        "the learning rates, validations, schedule state and bitwise weights of an uninterrupted run",
    ),
    Row(
        "fault",
        "torchrun `--max-restarts 1`, one worker killed with `kill -9` (one node; two nodes)",
        r"test_distributed\.py::test_(a_worker_killed|two_nodes_restart)",
        "the restarted group resumes from last.pt by itself; bitwise the uninterrupted weights",
    ),
    Row(
        "fault",
        "two nodes (`--nnodes 2`, c10d rendezvous on 127.0.0.1)",
        r"test_distributed\.py::test_two_nodes",
        "bitwise the weights of one launch of two processes",
    ),
    Row(
        "fault",
        "two processes stopped and resumed",
        r"test_distributed\.py::test_two_process_resume",
        "bitwise the weights of an uninterrupted two-process run",
    ),
    Row(
        "fault",
        "two trainings on one cache at the same moment",
        r"test_locks\.py::test_(two_trainings|a_second_process_waits)",
        "one builds each entry, the other waits and reads it whole; equal weights",
    ),
    Row(
        "fault",
        "a damaged cache entry (truncated, a flipped byte, a file or the manifest missing, a bad manifest)",
        r"test_locks\.py::test_a_(damaged_entry|failed_build)",
        "reported and rebuilt; a failed build leaves nothing",
    ),
    Row(
        "fault",
        "a second `seq2seq train` on a run directory in use (also a new one); a lock left by a killed run "
        "and its forked workers",
        r"test_locks\.py::test_(a_held_lock|a_second_training|a_run_refused|a_killed_trainers)",
        "one line naming the holder's pid, the holder's files untouched; a dead holder's lock is taken over at once",
    ),
    Row(
        "fault",
        "disk full (a real small tmpfs): the cache, a checkpoint, the records, the log",
        r"test_disk_full\.py::|test_rundir\.py::test_a_(record|log_line)_that_cannot",
        "one line naming the file; no half-written file; the previous checkpoint whole",
    ),
    Row(
        "bad input",
        "random YAML documents and `--set` strings (hypothesis)",
        r"test_fuzz\.py::.*config",
        "a valid config or one `seq2seq: error:` line, never a traceback",
    ),
    Row(
        "bad input",
        "random corpus bytes: mixed encodings, NUL bytes, CR/LF mixes (hypothesis)",
        r"test_fuzz\.py::.*(corpus|lines|read|bytes)",
        "a correct read or one clear error naming the file",
    ),
    Row(
        "bad input",
        "config values: wrong types, NaN, infinity, zero, negative, unknown and moved keys",
        r"test_config\.py::",
        "one line naming the key and what it takes",
    ),
    Row(
        "bad input",
        "paths: missing, a directory, a file in the way, unreadable; non-UTF-8 and corrupt files",
        r"test_cli\.py::|test_textfiles\.py::|test_locks\.py::test_a_(run_dir_below|cache_dir_that)",
        "one line and exit status 2",
    ),
    Row(
        "bad input",
        "API requests: malformed JSON, invalid UTF-8, wrong fields, over the limits",
        r"test_server\.py::test_(a_lone|attention_for_too_many|nul_bytes|score_with_mismatched|score_field|malformed|"
        r"invalid_utf8|a_body|a_wrong|bf16|an_unknown|an_impossible|options_beyond|a_server_whose|too_|a_declared|"
        r"extreme|the_api_key|the_scheme|a_local_server|a_path_outside|a_full_queue|clients_that_close|no_request)",
        "a 4xx status with a one-line detail; the server goes on",
    ),
]

EXAMPLES = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing")  # hypothesis's statistics, old and new


def run_tests(workspace: Path) -> tuple[list[dict], dict[str, tuple[int, int]]]:
    """Every test of the rows, once: their node ids and outcomes, and hypothesis's example counts per test."""
    paths = sorted({f"tests/{name}" for row in ROWS for name in row.files})
    junit = workspace / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    command += ["--hypothesis-show-statistics", *paths]
    log.info("Running %s", " ".join(command[2:]))
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    cases = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        cases.append({"id": f"{module}.py::{case.get('name')}", "outcome": outcome})
    return cases, hypothesis_examples(finished.stdout)


def hypothesis_examples(output: str) -> dict[str, tuple[int, int]]:
    """Examples (passing, failing) per test from --hypothesis-show-statistics, summed over its phases."""
    counts: dict[str, tuple[int, int]] = {}
    current = None
    for line in output.splitlines():
        if line.startswith("tests/") and "::" in line:
            current = line.strip().rstrip(":").split("/", 1)[1]
        elif current and (found := EXAMPLES.search(line)):
            passing, failing = counts.get(current, (0, 0))
            counts[current] = (passing + int(found.group(1)), failing + int(found.group(2)))
    return counts


def record(cases: list[dict], examples: dict[str, tuple[int, int]]) -> list[dict]:
    rows = []
    for row in ROWS:
        chosen = [case for case in cases if re.match(row.tests, case["id"])]
        passed = sum(case["outcome"] == "passed" for case in chosen)
        entry = {"kind": row.kind, "what": row.what, "survives": row.survives, "tests": len(chosen)}
        entry |= {"passed": passed, "failed": sum(case["outcome"] == "failed" for case in chosen)}
        generated = [examples[case["id"]] for case in chosen if case["id"] in examples]
        if generated:
            entry["examples"] = sum(p + f for p, f in generated)
            entry["examples_passed"] = sum(p for p, _ in generated)
        entry["test_ids"] = [case["id"] for case in chosen]
        rows.append(entry)
    return rows


def launch_loop() -> dict | None:
    path = ROOT / "docs" / "launch_loop.json"
    if not path.is_file():
        return None
    loop = json.loads(path.read_text())
    return {"commit": loop["commit"], "date": loop["date"], **loop["launches"], "load_runs": len(loop["load"])}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def markdown(results: dict) -> str:
    lines = [
        f"# Reliability record ({results['date']}, commit {results['commit']})",
        "",
        (
            f"Written by `{results['command']}` from one run of the tests named in each row "
            "(scripts/bench/reliability.py); nothing here is typed by hand."
        ),
        "",
        "| kind | what was injected or fed | cases tried | survived | what survives |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in results["rows"]:
        tried, survived = plural(row["tests"], "test"), f"{row['passed']}"
        if "examples" in row:
            tried += f", {row['examples']} generated examples"
            survived += f" tests, {row['examples_passed']} examples"
        lines.append(f"| {row['kind']} | {row['what']} | {tried} | {survived} | {row['survives']} |")
    loop = results.get("launch_loop")
    if loop:
        lines.append(
            f"| fault | {loop['total']} two-process torchrun launches beside the full suite "
            f"({loop['load_runs']} suite runs; docs/launch_loop.json, commit {loop['commit'][:10]}) | "
            f'{loop["total"]} launches | {loop["ok"]} | exit 0; aborts ("terminate called"): {loop["aborted"]} |'
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability"), help="writes OUTPUT.json and .md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = experiments.provenance(sys.argv)
    output = Path(args.output)
    if results["dirty"]:
        output = Path(tempfile.mkdtemp(prefix="reliability-")) / output.name
        log.warning("Uncommitted changes: not publishing to docs/, writing %s", output)
    with tempfile.TemporaryDirectory() as workspace:
        cases, examples = run_tests(Path(workspace))
    results["rows"] = record(cases, examples)
    results["launch_loop"] = launch_loop()
    experiments.write_results(results, output, markdown(results))
    print(markdown(results))
    return 0 if all(row["failed"] == 0 for row in results["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
