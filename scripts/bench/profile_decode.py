#!/usr/bin/env python3
"""Where decoding's time goes: torch.profiler over greedy and beam-5 decoding of the test split, as `evaluate` does.

    python scripts/bench/profile_decode.py --publish    # about 3 minutes on 2 CPU cores, from a clean tree

Loads a checkpoint (default runs/quickstart/best.pt, what the README's first command trains) as `seq2seq evaluate`
does, decodes the bundled test split (data/test.es) once to warm up, once timed and once under torch.profiler, greedy and beam 5, with
the checkpoint's own decoding settings otherwise. Writes OUTPUT.json (sentences/s, the operators by self CPU time
and their groups, the time no operator accounts for, the checkpoint's SHA-256, the provenance) and OUTPUT.md;
with --publish (a clean tree only) OUTPUT is docs/profile_decode.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import ROOT, dirty_publish_refused, provenance, write_results
from profile_step import groups

sys.path.insert(0, str(ROOT))

import torch

from seq2seq.cache import file_sha256
from seq2seq.ensemble import LoadedEnsemble, load_ensemble
from seq2seq.textfiles import iter_lines

log = logging.getLogger("bench")
# The beam's own bookkeeping: choosing, reordering and masking hypotheses.
SEARCH = {"aten::topk", "aten::sort", "aten::index_select", "aten::gather", "aten::index", "aten::masked_fill_"}
SEARCH |= {
    "aten::argmax",
    "aten::max",
    "aten::eq",
    "aten::ne",
    "aten::nonzero",
    "aten::where",
    "aten::div",
    "aten::remainder",
}


def profile_beam(loaded: LoadedEnsemble, sources: list[str], beam: int) -> dict:
    """Sentences/s of decoding `sources` with the loaded checkpoint and `beam`, and its operators by self time
    under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    from seq2seq.search import decode_lines

    options = dataclasses.replace(loaded.config.decode, beam=beam, n_best=1)

    def decode() -> None:
        decode_lines(loaded.ensemble, loaded.tokenizer, sources, torch.device("cpu"), options)

    decode()  # warm-up
    started = time.perf_counter()
    decode()
    seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        decode()
        profiled_seconds = time.perf_counter() - started
    events = profiler.key_averages()
    operators_ms = sum(event.self_cpu_time_total for event in events) / 1000
    operators = sorted(
        ({"name": e.key, "self_ms": e.self_cpu_time_total / 1000, "calls": e.count} for e in events),
        key=lambda op: -op["self_ms"],
    )
    per_step = [
        {"name": op["name"], "self_ms_per_step": op["self_ms"], "calls_per_step": op["calls"]} for op in operators
    ]
    return {
        "sentences": len(sources),
        "seconds": seconds,
        "sentences_per_s": len(sources) / seconds,
        "profiled_seconds": profiled_seconds,
        "operators_ms": operators_ms,
        "unattributed_share": 1 - operators_ms / (profiled_seconds * 1000),
        "groups": groups(per_step, profiled_seconds * 1000),
        "search_bookkeeping_share": sum(op["self_ms"] for op in operators if op["name"] in SEARCH)
        / (profiled_seconds * 1000),
        "operators": [{**op, "share": op["self_ms"] / (profiled_seconds * 1000)} for op in operators[:25]],
    }


def markdown(results: dict) -> str:
    """docs/profile_decode.md, from the JSON alone."""
    lines = [
        f"# Where decoding's time goes ({results['date']}, commit {results['commit'][:10]})",
        "",
        (
            f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch {results['machine']['torch']}. "
            f"Command: `{results['command']}`. Checkpoint {results['checkpoint']} (SHA-256 {results['checkpoint_sha256'][:12]}), "
            f"{results['source']}, the checkpoint's decoding settings; one warm-up pass, one timed, one under torch.profiler."
        ),
    ]
    for name, run in results["searches"].items():
        lines += [
            "",
            (
                f"## {name}: {run['sentences_per_s']:.1f} sentences/s ({run['sentences']} sentences in {run['seconds']:.1f} s; "
                f"{run['profiled_seconds']:.1f} s under the profiler)"
            ),
            "",
            (
                f"Operators account for {1 - run['unattributed_share']:.0%} of the profiled time; the other "
                f"{run['unattributed_share']:.0%} is Python and dispatch between them. The beam's bookkeeping "
                f"(top-k, reordering, masks) is {run['search_bookkeeping_share']:.0%}."
            ),
            "",
            "| group | ms | share of the time |",
            "|---|---:|---:|",
            *[f"| {group} | {v['ms_per_step']:.0f} | {v['share']:.0%} |" for group, v in run["groups"].items()],
            "",
            "| operator | self ms | calls | share of the time |",
            "|---|---:|---:|---:|",
            *[
                f"| `{op['name']}` | {op['self_ms']:.0f} | {op['calls']} | {op['share']:.1%} |"
                for op in run["operators"]
            ],
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "runs" / "quickstart" / "best.pt"))
    parser.add_argument(
        "--publish", action="store_true", help="write docs/profile_decode.{json,md} (a clean tree only)"
    )
    parser.add_argument("--output", default=str(ROOT / ".cache" / "bench" / "profile_decode"), help="without --publish")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = provenance(sys.argv)
    if args.publish and dirty_publish_refused("profile_decode.py", results):
        return 2
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        print(f"profile_decode.py: no checkpoint at {checkpoint}: train the quickstart first", file=sys.stderr)
        return 2
    results["checkpoint"] = str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint)
    results["checkpoint_sha256"] = file_sha256(checkpoint)
    source = ROOT / "data" / "test.es"  # the bundled test split, as the benchmark decodes it
    results["source"] = str(source.relative_to(ROOT))
    loaded = load_ensemble([str(checkpoint)], "cpu")  # loaded as `seq2seq evaluate` loads it
    sources = list(iter_lines(source))
    results["searches"] = {"greedy": profile_beam(loaded, sources, 1), "beam 5": profile_beam(loaded, sources, 5)}
    output = ROOT / "docs" / "profile_decode" if args.publish else Path(args.output)
    write_results(results, output, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
