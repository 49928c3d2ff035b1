#!/usr/bin/env python3
"""Where a training step's time goes: torch.profiler over real quickstart batches, fast path and input feeding.

    python scripts/bench/profile_step.py --publish    # about 3 minutes on 2 CPU cores, from a clean tree

Builds the quickstart model and real training batches through seq2seq.builders (as `seq2seq train` does), runs
4 warm-up steps, then profiles 12 steps (forward, backward, clipping, Adam) per variant. Writes OUTPUT.json (the
operators by self CPU time, their share of the step, ms per step, and the provenance) and OUTPUT.md; with
--publish (a clean tree only) OUTPUT is docs/profile. The operator groups are the levers docs/performance.md
discusses: matmuls, the GRU time loops' elementwise work, the additive score, the cross-entropy, and the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import ROOT, dirty_publish_refused, provenance, write_results

sys.path.insert(0, str(ROOT))

import torch
import yaml

log = logging.getLogger("bench")
WARM_UP, PROFILED = 4, 12
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv_", "aten::addmv"}
CROSS_ENTROPY = {"aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward"}
CROSS_ENTROPY |= {"aten::nll_loss_backward", "aten::gather", "aten::scatter_"}


def build(work: Path, input_feeding: bool):
    """The quickstart model, its optimizer and 16 real training batches."""
    from seq2seq import builders
    from seq2seq.config import load_config
    from seq2seq.data import collate
    from seq2seq.distributed import ProcessGroup
    from seq2seq.rundir import RunDir

    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["data"].update(dev=None, test=None)
    config["model"]["input_feeding"] = input_feeding
    config["train"]["run_dir"] = str(work / "run")
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    config = load_config(path)
    run_dir = RunDir(config.train.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    data = builders.create_training_data(config, ProcessGroup(), run_dir, None)
    model = builders.create_model(config, data.tokenizer, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr, betas=tuple(config.train.adam_betas))
    data.sampler.set_epoch(0)
    batches = [
        collate([data.dataset[i] for i in indices]) for _, indices in zip(range(WARM_UP + PROFILED), data.sampler)
    ]
    return config, model, optimizer, batches


def profile_variant(input_feeding: bool) -> dict:
    """ms per step and the operators' self CPU time per step, over PROFILED steps after WARM_UP."""
    from torch.profiler import ProfilerActivity, profile

    from seq2seq.model import sequence_loss

    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        config, model, optimizer, batches = build(Path(scratch), input_feeding)

    def step(batch) -> None:
        sequence_loss(model, batch, config.train.label_smoothing).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    for batch in batches[:WARM_UP]:
        step(batch)
    allocator = allocator_comparison(lambda: [step(batch) for batch in batches[WARM_UP:]])
    plain_ms = min(allocator["keep_freed_memory_ms_per_step"])  # what a training run does (seq2seq/allocator.py)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for batch in batches[WARM_UP:]:
            step(batch)
    events = profiler.key_averages()
    total_us = sum(event.self_cpu_time_total for event in events)
    operators = sorted(
        (
            {
                "name": e.key,
                "self_ms_per_step": e.self_cpu_time_total / 1000 / PROFILED,
                "calls_per_step": e.count / PROFILED,
            }
            for e in events
        ),
        key=lambda op: -op["self_ms_per_step"],
    )
    return {
        "ms_per_step": plain_ms,
        "allocator": allocator,
        "profiled_ms_per_step": total_us / 1000 / PROFILED,
        "target_tokens_per_step": sum(b.num_tgt_tokens for b in batches[WARM_UP:]) / PROFILED,
        "groups": groups(operators, total_us / 1000 / PROFILED),
        "operators": [op for op in operators[:25]],
    }


def allocator_comparison(steps, rounds: int = 3) -> dict:
    """ms per step (unprofiled) with glibc's defaults and with keep_freed_memory, alternating in this process."""
    from seq2seq.allocator import keep_freed_memory, restore_default

    timings: dict[str, list[float]] = {"default_ms_per_step": [], "keep_freed_memory_ms_per_step": []}
    for _ in range(rounds):
        for key, values in timings.items():
            restore_default() if key.startswith("default") else keep_freed_memory()
            started = time.perf_counter()
            steps()
            values.append((time.perf_counter() - started) / PROFILED * 1000)
    keep_freed_memory()
    best = {key: min(values) for key, values in timings.items()}
    return {**timings, "speedup": best["default_ms_per_step"] / best["keep_freed_memory_ms_per_step"]}


def groups(operators: list[dict], step_ms: float) -> dict[str, dict]:
    """Self time per step of the operator groups: matmuls, cross-entropy, the GRU and score autograd functions'
    own Python-level work, and the rest (elementwise work, copies, Adam, ...)."""
    sums = {"matmuls": 0.0, "cross-entropy": 0.0, "elementwise and copies": 0.0, "other": 0.0}
    for op in operators:
        name = op["name"]
        if name in MATMULS:
            key = "matmuls"
        elif name in CROSS_ENTROPY:
            key = "cross-entropy"
        elif name.startswith("aten::") and any(
            word in name
            for word in (
                "add",
                "mul",
                "sub",
                "div",
                "sigmoid",
                "tanh",
                "copy",
                "fill",
                "cat",
                "where",
                "lerp",
                "sqrt",
                "bernoulli",
            )
        ):
            key = "elementwise and copies"
        else:
            key = "other"
        sums[key] += op["self_ms_per_step"]
    return {key: {"ms_per_step": value, "share": value / step_ms} for key, value in sums.items()}


def markdown(results: dict) -> str:
    """docs/profile.md, from the JSON alone."""
    lines = [
        f"# Where a training step's time goes ({results['date']}, commit {results['commit'][:10]})",
        "",
        (
            f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch {results['machine']['torch']}. "
            f"Command: `{results['command']}`. {WARM_UP} warm-up steps, then {PROFILED} steps of the quickstart config "
            "(real batches, forward + backward + clipping + Adam) timed without and then with torch.profiler."
        ),
    ]
    for name, variant in results["variants"].items():
        lines += [
            "",
            (
                f"## {name}: {variant['ms_per_step']:.0f} ms per step ({variant['target_tokens_per_step']:.0f} target tokens; "
                f"{variant['profiled_ms_per_step']:.0f} ms under the profiler)"
            ),
            "",
            (
                f"glibc's allocator: {min(variant['allocator']['default_ms_per_step']):.0f} ms per step with its defaults, "
                f"{min(variant['allocator']['keep_freed_memory_ms_per_step']):.0f} ms keeping freed memory "
                f"(`seq2seq/allocator.py`, what training does): {variant['allocator']['speedup']:.2f}x (best of 3, alternating)."
            ),
            "",
            "| group | ms per step | share |",
            "|---|---:|---:|",
            *[f"| {group} | {v['ms_per_step']:.1f} | {v['share']:.0%} |" for group, v in variant["groups"].items()],
            "",
            "| operator | self ms per step | calls per step |",
            "|---|---:|---:|",
            *[
                f"| `{op['name']}` | {op['self_ms_per_step']:.1f} | {op['calls_per_step']:.0f} |"
                for op in variant["operators"]
            ],
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--publish", action="store_true", help="write docs/profile.{json,md} (a clean tree only)")
    parser.add_argument("--output", default=str(ROOT / ".cache" / "bench" / "profile"), help="without --publish")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = provenance(sys.argv)
    if args.publish and dirty_publish_refused("profile_step.py", results):
        return 2
    results["variants"] = {"fast path": profile_variant(False), "input feeding": profile_variant(True)}
    output = ROOT / "docs" / "profile" if args.publish else Path(args.output)
    write_results(results, output, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
