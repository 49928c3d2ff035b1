#!/usr/bin/env python3
"""Where bf16 autocast can and cannot pay on this CPU: the quickstart model's matmuls, shape by shape.

    python scripts/bench/bf16_shapes.py            # about 5 minutes on 2 quiet CPU cores
    python scripts/bench/bf16_shapes.py --quick    # about a minute, for iterating (never published)
    python scripts/bench/bf16_shapes.py --threads 1   # one torch thread: steadier figures on a busy machine

For the fast path (model.input_feeding false) and input feeding (true) of configs/quickstart.yaml, on
the same few real training batches, in this one process:
1. steps: whole training steps (forward, backward, clipping, Adam, as seq2seq.train runs them) in fp32 and
   under bf16 autocast, alternated pass by pass, after a first pass over the batches (the first pass meets
   every matmul shape for the first time: oneDNN builds a bf16 kernel per shape);
2. profile: torch.profiler over one more pass: self CPU time of aten::mm/addmm/bmm/baddbmm and the time
   in casts (aten::_to_copy) against the pass's wall time;
3. capture: a TorchDispatchMode records every matmul call's operands (shape, strides, dtype) and counts them;
   under autocast it also charges each fp32 -> bf16 cast to the matmul that consumed it, and the cast of a
   bf16 result back to fp32 to the matmul that produced it;
4. shapes: every captured call timed on its own (fp32, bf16 and its casts alternated, warm-up, best of
   several samples), weighted by the counts: matmul time per step in fp32, in bf16, in bf16 with its casts;
   then an Amdahl projection of the step speedup bf16 matmuls could give, against the measured one, and what
   the rest of the step would have to gain for 1.4x.
Then, one fresh process per variant, peak RSS (VmHWM: a child's ru_maxrss would start at this process's size)
of training steps on new batches: fp32, bf16, bf16 with ONEDNN_PRIMITIVE_CACHE_CAPACITY=0, bf16 without
autocast's weight cache, fp32 and bf16 with glibc's mmap threshold fixed, bf16 with both; with the bytes saved
for backward by dtype and the allocations per op of one step (torch.profiler, profile_memory).
A CPU without native bf16 gets the fp32 figures only (emulated bf16 matmuls would take hours).
Writes OUTPUT.json (with the full commit hash and whether the tree was dirty) and OUTPUT.md, rendered from the
JSON alone; from a tree with uncommitted changes, or with --quick, to a temporary directory instead of docs/.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from experiments import ROOT, provenance, write_results
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from seq2seq import builders
from seq2seq.config import Config, load_config
from seq2seq.data import Batch, collate
from seq2seq.device import autocast, native_bf16
from seq2seq.distributed import ProcessGroup
from seq2seq.model import sequence_loss
from seq2seq.rundir import RunDir

log = logging.getLogger("bench")

CONFIG = ROOT / "configs" / "quickstart.yaml"
MODES = {"fast_path": False, "input_feeding": True}  # name -> model.input_feeding
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "linear")
MATMUL_EVENTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear")
LOW = (torch.bfloat16, torch.float16)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
TARGET_SPEEDUP = 1.4
ELEMENTWISE_GAIN = 2.0  # what bf16 can give memory-bound work at most: half the bytes
MEMORY_VARIANTS = [  # name, precision, extra environment, autocast weight cache, profile one step's memory
    ("fp32", "fp32", {}, True, True),
    ("bf16", "bf16", {}, True, True),
    ("bf16, ONEDNN_PRIMITIVE_CACHE_CAPACITY=0", "bf16", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}, True, False),
    ("bf16, autocast weight cache off", "bf16", {}, False, False),
    ("fp32, MALLOC_MMAP_THRESHOLD_=65536", "fp32", {"MALLOC_MMAP_THRESHOLD_": "65536"}, True, False),
    ("bf16, MALLOC_MMAP_THRESHOLD_=65536", "bf16", {"MALLOC_MMAP_THRESHOLD_": "65536"}, True, False),
    (
        "bf16, both (primitive cache 0, mmap threshold 65536)",
        "bf16",
        {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "MALLOC_MMAP_THRESHOLD_": "65536"},
        True,
        False,
    ),
]


# --- the machine ------------------------------------------------------------------------------------


def cpu_facts() -> dict:
    """What decides bf16 speed here: torch's CPU capability, the cpuinfo flags that matter, native bf16."""
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.partition(":")[2].split())
    except OSError:
        flags = None
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "flags": {flag: flag in flags for flag in CPU_FLAGS} if flags is not None else None,
        "native_bf16": native_bf16(),
        "threads": torch.get_num_threads(),
    }


# --- the model and real batches ---------------------------------------------------------------------


def quickstart_config(work: Path, input_feeding: bool) -> Config:
    """configs/quickstart.yaml with absolute data paths, no dev or test set, and its run directory in `work`."""
    overrides = [
        f"data.train={ROOT / 'data' / 'train'}",
        "data.dev=null",
        "data.test=null",
        f"data.cache_dir={ROOT / '.cache' / 'seq2seq'}",
        f"train.run_dir={work / ('input-feeding' if input_feeding else 'fast-path')}",
        f"model.input_feeding={'true' if input_feeding else 'false'}",
        "train.device=cpu",
    ]
    return load_config(CONFIG, overrides)


@dataclass
class Parts:
    """A freshly initialised model and the first `count` training batches of epoch 0."""

    config: Config
    model: torch.nn.Module
    batches: list[Batch]


def training_parts(config: Config, count: int) -> Parts:
    """The model and real batches, built through seq2seq.builders as training builds them."""
    run_dir = RunDir(config.train.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    data = builders.create_training_data(config, ProcessGroup(), run_dir, None)
    builders.set_seed(config.train.seed)
    model = builders.create_model(config, data.tokenizer, torch.device("cpu"))
    data.sampler.set_epoch(0)
    batches = [collate([data.dataset[i] for i in indices]) for _, indices in zip(range(count), data.sampler)]
    return Parts(config, model, batches)


class StepRunner:
    """Training steps of one model with its own Adam and schedule, as seq2seq.train's Trainer runs them."""

    def __init__(self, config: Config, model: torch.nn.Module, precision: str, autocast_cache: bool = True):
        self.config, self.model, self.precision, self.autocast_cache = config, model, precision, autocast_cache
        self.optimizer = builders.create_optimizer(config, model)
        self.schedule = builders.create_schedule(config)
        self.steps = 0

    def _autocast(self) -> torch.autocast:
        if self.autocast_cache:
            return autocast(torch.device("cpu"), self.precision)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16", cache_enabled=False)

    def step(self, batch: Batch) -> None:
        """One update on `batch`: forward under autocast, backward, clipping, the optimizer step."""
        self.model.train()
        self.steps += 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr(self.steps)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = sequence_loss(self.model, batch, self.config.train.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.clip_grad_norm or float("inf"))
        self.optimizer.step()

    def run(self, batches: list[Batch]) -> float:
        """Seconds for one step on each batch."""
        started = time.perf_counter()
        for batch in batches:
            self.step(batch)
        return time.perf_counter() - started


# --- 1. whole steps, 2. the profile -----------------------------------------------------------------


def time_steps(parts: Parts, precisions: list[str], rounds: int) -> tuple[dict, dict[str, StepRunner]]:
    """A first pass per precision, then `rounds` passes alternating precisions; ms per step (of the best pass,
    and the median) and target tokens/s (best pass)."""
    runners = {p: StepRunner(parts.config, copy.deepcopy(parts.model), p) for p in precisions}
    tokens = sum(batch.num_tgt_tokens for batch in parts.batches)
    first = {p: runners[p].run(parts.batches) for p in precisions}
    passes: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(rounds):
        for precision in precisions:
            passes[precision].append(runners[precision].run(parts.batches))
    steps = len(parts.batches)
    result = {
        precision: {
            "first_pass_step_ms": round(first[precision] / steps * 1e3, 1),
            "pass_step_ms": [round(s / steps * 1e3, 1) for s in seconds],
            "step_ms": round(min(seconds) / steps * 1e3, 1),  # the best pass: least disturbed by other work
            "median_step_ms": round(statistics.median(seconds) / steps * 1e3, 1),
            "tokens_per_s": round(tokens / min(seconds), 1),
        }
        for precision, seconds in passes.items()
    }
    log.info("steps: %s", {p: (r["step_ms"], r["tokens_per_s"]) for p, r in result.items()})
    return result, runners


def profile_pass(runner: StepRunner, batches: list[Batch]) -> dict:
    """torch.profiler over one pass: ms per step in matmuls (self time), in casts, and in all (wall)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        seconds = runner.run(batches)
    averages = {event.key: event for event in profiler.key_averages()}
    matmul_us = sum(averages[name].self_cpu_time_total for name in MATMUL_EVENTS if name in averages)
    cast_us = averages["aten::_to_copy"].cpu_time_total if "aten::_to_copy" in averages else 0.0
    step_ms = seconds / len(batches) * 1e3
    matmul_ms, cast_ms = matmul_us / 1e3 / len(batches), cast_us / 1e3 / len(batches)
    return {
        "step_ms": round(step_ms, 1),
        "matmul_ms": round(matmul_ms, 1),
        "cast_ms": round(cast_ms, 1),
        "matmul_share": round(matmul_ms / step_ms, 3),
    }


# --- 3. the capture ---------------------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ..."""
    return str(dtype).removeprefix("torch.")


def storage_of(tensor: Tensor) -> int:
    """The address of a tensor's storage (views of one tensor share it)."""
    return tensor.untyped_storage().data_ptr()


def operand_key(tensor: Tensor) -> tuple:
    """(shape, strides, dtype): all a matmul's speed depends on."""
    return tuple(tensor.shape), tuple(tensor.stride()), dtype_name(tensor.dtype)


@dataclass
class Call:
    """One distinct matmul call: how often it ran, and the casts charged to it."""

    op: str
    operands: tuple  # operand_key of each tensor argument, in order
    pattern: str  # the shapes with the batch's sizes written B, S, T, N
    group: str
    count: int = 0
    casts: Counter = field(default_factory=Counter)  # cast key -> casts charged to this call


@dataclass
class Sizes:
    """What a shape is read against: the batch's sizes and the model's."""

    batch: dict[str, int]  # N (real target tokens), B·S, B·T, B, S, T
    model_dims: set[int]  # every size of every parameter
    hidden: set[int]  # GRU state sizes
    vocab: int


class MatmulRecorder(TorchDispatchMode):
    """Counts matmul calls by operands; charges fp32 <-> low-precision casts to the matmuls they serve.

    Tensors between a cast and its matmul are kept alive until `flush`, so no storage address is reused
    within a batch and an address identifies its tensor.
    """

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.sizes = sizes
        self.calls: dict[tuple, Call] = {}
        self.other_casts: Counter = Counter()  # casts no matmul claimed: cast key -> count
        self._fresh: dict[int, tuple[Tensor, tuple]] = {}  # fp32 -> low casts not consumed yet
        self._products: dict[int, tuple[Tensor, tuple]] = {}  # low-precision matmul results not cast back yet

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in MATMUL_OPS:
            self._matmul(name, args, out)
        elif name == "_to_copy" and isinstance(out, Tensor):
            self._cast(args[0], out)
        return out

    def _cast(self, source: Tensor, out: Tensor) -> None:
        if not (source.is_floating_point() and out.is_floating_point()) or source.dtype == out.dtype:
            return
        key = (tuple(source.shape), tuple(source.stride()), dtype_name(source.dtype), dtype_name(out.dtype))
        if source.dtype == torch.float32 and out.dtype in LOW:
            self._fresh[storage_of(out)] = (out, key)
            return
        product = self._products.pop(storage_of(source), None) if out.dtype == torch.float32 else None
        if product is not None:
            self.calls[product[1]].casts[key] += 1
        else:
            self.other_casts[key] += 1

    def _matmul(self, name: str, args: tuple, out: Tensor) -> None:
        tensors = [arg for arg in args if isinstance(arg, Tensor)]
        key = (name, tuple(operand_key(t) for t in tensors))
        call = self.calls.get(key)
        if call is None:
            shapes = [tuple(t.shape) for t in tensors]
            call = Call(name, key[1], pattern(name, shapes, self.sizes), group_of(name, shapes, self.sizes))
            self.calls[key] = call
        call.count += 1
        for tensor in tensors:
            fresh = self._fresh.pop(storage_of(tensor), None)
            if fresh is not None:
                call.casts[fresh[1]] += 1
        if out.dtype in LOW:
            self._products[storage_of(out)] = (out, key)

    def flush(self) -> None:
        """End of a batch: casts no matmul consumed count as other casts; forget the kept tensors."""
        for _, key in self._fresh.values():
            self.other_casts[key] += 1
        self._fresh.clear()
        self._products.clear()


def symbol(dim: int, sizes: Sizes) -> str:
    """A dimension as written in the tables: model sizes as numbers, batch sizes by name (N, B·S, B, ...)."""
    if dim in sizes.model_dims:
        return str(dim)
    for name, value in sizes.batch.items():
        if dim == value:
            return name
    return str(dim)


def pattern(op: str, shapes: list[tuple], sizes: Sizes) -> str:
    """'addmm [B,256]x[256,768] + [768]': the product, then any added input."""
    written = ["[" + ",".join(symbol(d, sizes) for d in shape) + "]" for shape in shapes]
    if op in ("addmm", "baddbmm"):
        return f"{op} {written[1]}x{written[2]} + {written[0]}"
    return f"{op} " + "x".join(written)


def group_of(op: str, shapes: list[tuple], sizes: Sizes) -> str:
    """Which part of the model a matmul belongs to, from its shapes alone."""
    if op in ("bmm", "baddbmm"):
        return "attention context bmm and its gradients"
    matrices = [s for s in shapes if len(s) == 2]
    if len(matrices) < 2:
        return "other"
    (rows, inner), columns = matrices[0], matrices[1][-1]
    if sizes.vocab in (rows, inner, columns):
        return "output layer [N,H]x[H,V] and its gradients"
    if rows == sizes.batch["B"] and any({inner, columns} == {h, 3 * h} for h in sizes.hidden):
        return "GRU recurrent step [B,H]x[H,3H] (forward) and [B,3H]x[3H,H] (backward)"
    if rows == sizes.batch["B"]:
        return "other per-step matmuls [B,...] (bridge; input feeding's per-step layers)"
    if inner not in sizes.model_dims and rows in sizes.model_dims and columns in sizes.model_dims:
        return "weight gradients [..,K]x[K,..], K = positions"
    return "layers over all positions (input projections, combine, attention projections) and input gradients"


def batch_sizes(batch: Batch) -> dict[str, int]:
    """The sizes a batch's matmul shapes are made of, most specific first."""
    rows, source, target = batch.src.size(0), batch.src.size(1), batch.tgt_in.size(1)
    return {"N": batch.num_tgt_tokens, "B·S": rows * source, "B·T": rows * target, "B": rows, "S": source, "T": target}


def model_sizes(model: torch.nn.Module, config: Config) -> Sizes:
    """The model's sizes (the batch's are filled in per batch)."""
    dims = {d for p in model.parameters() for d in p.shape}
    hidden = {config.model.encoder_hidden_size, config.model.decoder_hidden_size}
    return Sizes({}, dims, hidden, model.decoder.output.out_features)


def capture(model: torch.nn.Module, config: Config, batches: list[Batch], precision: str) -> MatmulRecorder:
    """Record the matmuls (and casts) of a forward and backward pass on each batch."""
    recorder = MatmulRecorder(model_sizes(model, config))
    model.train()
    for batch in batches:
        recorder.sizes.batch = batch_sizes(batch)
        with recorder:
            with autocast(torch.device("cpu"), precision):
                loss = sequence_loss(model, batch, config.train.label_smoothing)
            loss.backward()
        recorder.flush()
        model.zero_grad(set_to_none=True)
    return recorder


# --- 4. the shapes, timed one by one ----------------------------------------------------------------


def make_operand(key: tuple) -> Tensor:
    """A random tensor with exactly the captured shape, strides and dtype."""
    shape, stride, dtype = key
    tensor = torch.empty_strided(shape, stride, dtype=getattr(torch, dtype))
    return tensor.copy_(torch.randn(shape))


def matmul_job(op: str, operands: tuple) -> Callable[[], object]:
    """A call of aten `op` on fresh operands of the captured kind."""
    function, tensors = getattr(torch.ops.aten, op).default, [make_operand(key) for key in operands]
    return lambda: function(*tensors)


def cast_job(key: tuple) -> Callable[[], object]:
    """A cast of a tensor of the captured shape and strides from one dtype to the other."""
    shape, stride, source, target = key
    tensor, dtype = make_operand((shape, stride, source)), getattr(torch, target)
    return lambda: tensor.to(dtype)


def best_seconds(jobs: dict, repeats: int, sample_s: float = 0.002) -> dict:
    """Seconds per call of each job: warm-up, then the best of `repeats` samples taken round-robin
    (so the jobs alternate); a sample repeats a fast call until it lasts about `sample_s`."""
    inner = {}
    for key, job in jobs.items():
        job()  # warm-up: oneDNN builds its kernel for this shape on the first call
        started = time.perf_counter()
        job()
        inner[key] = max(1, min(2000, int(sample_s / max(time.perf_counter() - started, 1e-7))))
    best = dict.fromkeys(jobs, float("inf"))
    for _ in range(repeats):
        for key, job in jobs.items():
            started = time.perf_counter()
            for _ in range(inner[key]):
                job()
            best[key] = min(best[key], (time.perf_counter() - started) / inner[key])
    return best


def signature(call: Call) -> tuple:
    """The op and operand shapes (not strides, not dtypes): what an fp32 call and its bf16 twin share."""
    return call.op, tuple(shape for shape, _, _ in call.operands)


def time_calls(recorders: dict[str, MatmulRecorder], repeats: int, timings: dict) -> None:
    """Fill `timings` (job key -> seconds) for every call and cast the recorders hold, one signature at a time:
    its fp32 call, its bf16 call and their casts alternate, and only one signature's operands are alive at once."""
    by_signature: dict[tuple, list] = {}
    for recorder in recorders.values():
        for call in recorder.calls.values():
            by_signature.setdefault(signature(call), []).append(call)
    for calls in by_signature.values():
        jobs = {}
        for call in calls:
            if (call.op, call.operands) not in timings:
                jobs[(call.op, call.operands)] = matmul_job(call.op, call.operands)
            jobs.update({key: cast_job(key) for key in call.casts if key not in timings})
        timings.update(best_seconds(jobs, repeats))
    others = {key: cast_job(key) for r in recorders.values() for key in r.other_casts if key not in timings}
    timings.update(best_seconds(others, repeats))


def pattern_rows(recorders: dict[str, MatmulRecorder], timings: dict, batches: int) -> list[dict]:
    """Per-step count and ms of each (group, pattern): fp32, bf16, bf16 with the casts charged to it."""
    rows: dict[tuple, dict] = {}
    for precision, recorder in recorders.items():
        for call in recorder.calls.values():
            row = rows.setdefault(
                (call.group, call.pattern),
                {"group": call.group, "pattern": call.pattern, "calls": {}, "ms": {}, "shapes": set()},
            )
            row["shapes"].add(str(list(signature(call)[1])))
            seconds = call.count * timings[(call.op, call.operands)]
            casts = sum(n * timings[key] for key, n in call.casts.items())
            row["calls"][precision] = row["calls"].get(precision, 0) + call.count / batches
            row["ms"][precision] = row["ms"].get(precision, 0.0) + seconds * 1e3 / batches
            if precision != "fp32":
                with_casts = row["ms"].get(precision + "+casts", 0.0) + (seconds + casts) * 1e3 / batches
                row["ms"][precision + "+casts"] = with_casts
    return [finish_row(row) for row in sorted(rows.values(), key=lambda r: -r["ms"].get("fp32", 0.0))]


def finish_row(row: dict) -> dict:
    """Round a pattern row and give its fp32 / bf16 speedups."""
    ms = row["ms"]
    row["distinct_shapes"] = len(row.pop("shapes"))
    row["calls_per_step"] = {k: round(v, 1) for k, v in row.pop("calls").items()}
    row["ms_per_step"] = {k: round(v, 3) for k, v in ms.items()}
    if "fp32" in ms and "bf16" in ms:
        row["speedup_bf16"] = round(ms["fp32"] / ms["bf16"], 2)
        row["speedup_bf16_with_casts"] = round(ms["fp32"] / ms["bf16+casts"], 2)
    del row["ms"]
    return row


def group_totals(rows: list[dict]) -> dict:
    """The pattern rows summed by group, plus a total."""
    groups: dict[str, dict] = {}
    for row in rows:
        total = groups.setdefault(row["group"], {"calls_per_step": Counter(), "ms_per_step": Counter()})
        total["calls_per_step"].update(row["calls_per_step"])
        total["ms_per_step"].update(row["ms_per_step"])
    everything = {"calls_per_step": Counter(), "ms_per_step": Counter()}
    for total in groups.values():
        everything["calls_per_step"].update(total["calls_per_step"])
        everything["ms_per_step"].update(total["ms_per_step"])
    groups["all matmuls"] = everything
    return {name: rounded(total) for name, total in groups.items()}


def rounded(total: dict) -> dict:
    """A group total with rounded figures and its speedups."""
    ms = total["ms_per_step"]
    result = {
        "calls_per_step": {k: round(v, 1) for k, v in total["calls_per_step"].items()},
        "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
    }
    if ms.get("bf16"):
        result["speedup_bf16"] = round(ms["fp32"] / ms["bf16"], 2)
        result["speedup_bf16_with_casts"] = round(ms["fp32"] / ms["bf16+casts"], 2)
    return result


def cast_summary(recorder: MatmulRecorder, timings: dict, parameter_shapes: set, batches: int) -> dict:
    """Casts per step: charged to matmuls, other, and those of weight-shaped tensors (the weight cache's work)."""
    charged = Counter()
    for call in recorder.calls.values():
        charged.update(call.casts)
    summary = {}
    for name, counts in (("charged_to_matmuls", charged), ("other", recorder.other_casts)):
        summary[name] = {
            "per_step": round(sum(counts.values()) / batches, 1),
            "ms_per_step": round(sum(n * timings[k] for k, n in counts.items()) * 1e3 / batches, 2),
        }
    weights = Counter({k: n for k, n in (charged + recorder.other_casts).items() if k[0] in parameter_shapes})
    summary["weight_shaped"] = {
        "per_step": round(sum(weights.values()) / batches, 1),
        "ms_per_step": round(sum(n * timings[k] for k, n in weights.items()) * 1e3 / batches, 2),
        "most_cast": [
            {"shape": list(k[0]), "direction": f"{k[2]}->{k[3]}", "per_step": round(n / batches, 1)}
            for k, n in weights.most_common(3)
        ],
    }
    return summary


def projection(step_ms: dict, totals: dict, casts: dict) -> dict:
    """Amdahl: the step with every matmul at its measured bf16 speed and the rest unchanged, against the
    measured step; and what the rest would have to gain for TARGET_SPEEDUP. `consistent` is False when the
    matmuls timed alone add up to more than the measured step (a busy machine): then no projection."""
    step, matmuls = step_ms["fp32"], totals["ms_per_step"]
    rest = step - matmuls["fp32"]
    consistent = rest > 0
    result = {
        "fp32_step_ms": step,
        "matmul_share_fp32": round(matmuls["fp32"] / step, 3),
        "rest_ms": round(rest, 1),
        "consistent": consistent,
        "bound_if_matmuls_were_free": round(step / rest, 2) if consistent else None,
    }
    if "bf16" not in matmuls:
        return result
    result["matmul_speedup_bf16"] = round(matmuls["fp32"] / matmuls["bf16"], 2)
    result["measured_speedup"] = round(step / step_ms["bf16"], 3)
    if not consistent:
        return result
    other_casts = casts["other"]["ms_per_step"]
    needed_rest = step / TARGET_SPEEDUP - matmuls["bf16"]
    result.update(
        {
            "projected_speedup": round(step / (rest + matmuls["bf16"]), 3),
            "projected_speedup_with_casts": round(step / (rest + matmuls["bf16+casts"] + other_casts), 3),
            "bf16_rest_ms": round(step_ms["bf16"] - matmuls["bf16+casts"] - other_casts, 1),
            "rest_speedup_needed": round(rest / needed_rest, 2) if needed_rest > 0 else None,
            "rest_share_at_2x_needed": round(2 * (1 - needed_rest / rest), 3) if needed_rest > 0 else None,
        }
    )
    return result


# --- one mode: steps, profile, capture, shapes ------------------------------------------------------


def measure_mode(work: Path, input_feeding: bool, args: argparse.Namespace, bf16: bool, timings: dict) -> dict:
    """Everything of the module docstring's points 1-4 for one decoder mode."""
    parts = training_parts(quickstart_config(work, input_feeding), args.batches)
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    steps, runners = time_steps(parts, precisions, args.rounds)
    profiles = {p: profile_pass(runners[p], parts.batches) for p in precisions}
    recorders = {p: capture(copy.deepcopy(parts.model), parts.config, parts.batches, p) for p in precisions}
    time_calls(recorders, args.repeats, timings)
    rows = pattern_rows(recorders, timings, len(parts.batches))
    totals = group_totals(rows)
    parameter_shapes = {tuple(p.shape) for p in parts.model.parameters()}
    parameter_shapes |= {tuple(reversed(shape)) for shape in parameter_shapes}
    casts = cast_summary(recorders["bf16"], timings, parameter_shapes, len(parts.batches)) if bf16 else None
    step_ms = {p: steps[p]["step_ms"] for p in precisions}
    return {
        "batches": [{**batch_sizes(batch)} for batch in parts.batches],
        "model": {"H": parts.config.model.decoder_hidden_size, "V": model_sizes(parts.model, parts.config).vocab},
        "steps": steps,
        "profile": profiles,
        "groups": totals,
        "patterns": rows,
        "casts": casts,
        "projection": projection(step_ms, totals["all matmuls"], casts or {}),
    }


# --- the non-matmul rest: elementwise ops at the model's sizes -------------------------------------


def elementwise_probe(sizes: dict, repeats: int) -> list[dict]:
    """fp32 against bf16 (inputs already bf16) time of elementwise ops at the sizes the rest of a step works on:
    the GRU's gates and state, additive attention's score buffer, the logits. `sizes`: B, S, N, H, V.

    A new result is allocated by every op as in training, except "into an existing tensor": the difference is
    what allocating costs (glibc serves blocks above its mmap threshold, at most 32 MiB, from fresh pages)."""
    b, s, n, h, v = (sizes[k] for k in ("B", "S", "N", "H", "V"))
    shapes = {"GRU gates [B,3H]": (b, 3 * h), "GRU state [B,H]": (b, h), "score buffer [B,S,H]": (b, s, h)}
    shapes["logits [N,V]"] = (n, v)
    jobs = {}
    for name, shape in shapes.items():
        for dtype in ("float32", "bfloat16"):
            x, y, out = (torch.randn(shape).to(getattr(torch, dtype)) for _ in range(3))
            jobs[(name, "sigmoid", dtype)] = lambda x=x: torch.sigmoid(x)
            jobs[(name, "mul", dtype)] = lambda x=x, y=y: x * y
            jobs[(name, "mul into an existing tensor", dtype)] = lambda x=x, y=y, out=out: torch.mul(x, y, out=out)
            if name.startswith("logits"):
                jobs[(name, "log_softmax", dtype)] = lambda x=x: torch.log_softmax(x, dim=-1)
    best = best_seconds(jobs, repeats)
    return [
        {
            "tensor": name,
            "op": op,
            "fp32_us": round(best[(name, op, "float32")] * 1e6, 1),
            "bf16_us": round(best[(name, op, "bfloat16")] * 1e6, 1),
            "speedup_bf16": round(best[(name, op, "float32")] / best[(name, op, "bfloat16")], 2),
        }
        for name, op, dtype in jobs
        if dtype == "float32"
    ]


# --- memory, one fresh process per variant ----------------------------------------------------------


def memory_child(spec: dict) -> dict:
    """In a fresh process: peak RSS of `steps` updates on new batches, bytes saved for backward, allocations."""
    with tempfile.TemporaryDirectory(prefix="bf16-memory-") as work:
        parts = training_parts(quickstart_config(Path(work), False), spec["steps"])
    runner = StepRunner(parts.config, parts.model, spec["precision"], spec["autocast_cache"])
    before = rss_mib("VmRSS")
    saved: list[Counter] = []
    started = time.perf_counter()
    for batch in parts.batches:
        saved.append(Counter())
        with torch.autograd.graph.saved_tensors_hooks(saved_bytes(saved[-1]), lambda tensor: tensor):
            runner.step(batch)
    seconds = time.perf_counter() - started
    largest = max(saved, key=lambda counts: sum(counts.values()))
    result = {
        "rss_before_steps_mib": round(before, 1),
        "peak_rss_mib": round(rss_mib("VmHWM"), 1),
        "step_ms_new_batches": round(seconds / len(parts.batches) * 1e3, 1),
        "saved_for_backward_mib": {k: round(v / 2**20, 1) for k, v in largest.items()},
    }
    if spec["profile"]:
        result["allocations_per_step_mib"] = allocations(runner, max(parts.batches, key=lambda b: b.num_tgt_tokens))
    return result


def rss_mib(field: str) -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MiB.

    Not getrusage's ru_maxrss: a child started from this big process inherits the parent's peak through
    fork and exec, so every variant would report the parent's size. VmHWM belongs to the child's own memory
    map. Where /proc is missing, ru_maxrss it is.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def saved_bytes(counts: Counter) -> Callable[[Tensor], Tensor]:
    """A saved-tensors pack hook adding each storage's bytes once to counts[dtype]."""
    seen = set()

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            counts[dtype_name(tensor.dtype)] += storage.nbytes()
        return tensor

    return pack


def allocations(runner: StepRunner, batch: Batch, top: int = 6) -> dict:
    """MiB each op allocates in one step (torch.profiler's self CPU memory, allocations net of frees)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        runner.step(batch)
    net = {e.key: e.self_cpu_memory_usage for e in profiler.key_averages() if e.self_cpu_memory_usage > 0}
    largest = sorted(net.items(), key=lambda item: -item[1])[:top]
    return {"total": round(sum(net.values()) / 2**20, 1), "largest": {k: round(v / 2**20, 1) for k, v in largest}}


def measure_memory(steps: int, bf16: bool) -> list[dict]:
    """Each memory variant in its own process (bf16 ones only where the CPU has native bf16)."""
    results = []
    for name, precision, env, cache, profile in MEMORY_VARIANTS:
        if precision == "bf16" and not bf16:
            continue
        spec = {"precision": precision, "autocast_cache": cache, "profile": profile, "steps": steps}
        command = [
            sys.executable,
            __file__,
            "--threads",
            str(torch.get_num_threads()),
            "--memory-child",
            json.dumps(spec),
        ]
        log.info("memory: %s", name)
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"memory variant {name!r} failed:\n{done.stderr[-3000:]}")
        results.append({"variant": name, **json.loads(done.stdout.strip().splitlines()[-1])})
        log.info("  %s", results[-1])
    return results


# --- the report -------------------------------------------------------------------------------------

MODE_TITLES = {"fast_path": "fast path (no input feeding)", "input_feeding": "input feeding"}


def markdown(results: dict) -> str:
    """The page docs/bf16_shapes.md, from the JSON alone."""
    cpu = results["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in (cpu["flags"] or {}).items())
    lines = [
        f"# bf16 on this CPU, shape by shape ({results['date']}, commit {results['commit'][:12]})",
        "",
        (
            f"{results['machine']['cpu']}, {results['machine']['cores']} cores, torch {results['machine']['torch']}, "
            f"{cpu['threads']} threads. CPU capability {cpu['capability']}; {flags}; native bf16: "
            f"{'yes' if cpu['native_bf16'] else 'no'}. Model: `configs/quickstart.yaml`, {results['batches']} real "
            f"batches, {results['rounds']} alternating passes per precision. Written by `scripts/bench/bf16_shapes.py` "
            "from its JSON."
        ),
        "",
    ]
    if results.get("bf16_skipped"):
        lines += [f"**bf16 not measured:** {results['bf16_skipped']}", ""]
    lines += conclusion(results)
    for mode, figures in results["modes"].items():
        lines += mode_section(MODE_TITLES.get(mode, mode), figures)
    lines += elementwise_section(results.get("elementwise"))
    lines += memory_section(results["memory"])
    lines += [f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def conclusion(results: dict) -> list[str]:
    """What the figures say, a few sentences per mode."""
    lines = ["## Conclusion", ""]
    for mode, figures in results["modes"].items():
        if "measured_speedup" in figures["projection"]:
            lines.append(f"- **{MODE_TITLES.get(mode, mode)}**: " + mode_conclusion(figures))
    if results.get("elementwise"):
        lines.append("- **the non-matmul rest in bf16**: " + elementwise_conclusion(results["elementwise"]))
    return [*lines, ""]


def elementwise_conclusion(rows: list[dict]) -> str:
    """How elementwise ops fare in bf16 at the recurrence's sizes and at the large tensors' sizes."""
    small = [r["speedup_bf16"] for r in rows if r["tensor"].startswith("GRU")]
    large = [r for r in rows if not r["tensor"].startswith("GRU")]
    arithmetic = [r["speedup_bf16"] for r in large if r["op"] == "mul into an existing tensor"]
    text = f"elementwise ops on the GRU's per-step tensors run {min(small):.2f}-{max(small):.2f}x in bf16 (below 1: slower)"
    if arithmetic:
        text += (
            f"; on the score buffer and the logits, arithmetic alone runs {min(arithmetic):.2f}-{max(arithmetic):.2f}x"
        )
    text += ". "
    logits = {r["op"]: r for r in large if r["tensor"].startswith("logits")}
    if "mul" in logits and "mul into an existing tensor" in logits:
        fresh, existing = logits["mul"], logits["mul into an existing tensor"]
        text += (
            f"A new logits-sized result costs {(fresh['fp32_us'] - existing['fp32_us']) / 1e3:.1f} ms more than "
            f"writing into an existing tensor in fp32, {(fresh['bf16_us'] - existing['bf16_us']) / 1e3:.1f} ms in "
            "bf16 (allocation: glibc maps blocks above its mmap threshold, at most 32 MiB, as fresh pages). "
        )
    if max(small) < 1.1:
        text += (
            "Per-step tensors are too small for halving the bytes to matter (each op costs its dispatch), so bf16 "
            "GRU gates would not shorten the recurrence; fusing its ~15 ops per step would, in fp32 as in bf16."
        )
    return text


def mode_conclusion(figures: dict) -> str:
    """Matmul share, shape-level factor, Amdahl against measured, and what 1.4x would take."""
    p, matmuls = figures["projection"], figures["groups"]["all matmuls"]
    text = (
        f"matmuls are {p['matmul_share_fp32']:.0%} of an fp32 step ({matmuls['ms_per_step']['fp32']:.0f} of "
        f"{p['fp32_step_ms']:.0f} ms); shape by shape they run {p['matmul_speedup_bf16']:.2f}x faster in bf16 "
        f"(inputs already bf16), {matmuls['speedup_bf16_with_casts']:.2f}x counting the casts autocast does. "
    )
    if not p["consistent"]:
        return text + (
            f"Measured step speedup {p['measured_speedup']:.2f}x. The matmuls timed alone take longer than the "
            "measured step: the machine was busy, no projection."
        )
    text += (
        f"Amdahl: {p['projected_speedup']:.2f}x at best ({p['projected_speedup_with_casts']:.2f}x with all casts), "
        f"{p['bound_if_matmuls_were_free']:.2f}x if matmuls took no time; measured {p['measured_speedup']:.2f}x. "
    )
    if p["measured_speedup"] < 0.95 * p["projected_speedup_with_casts"]:
        text += (
            f"The measured step falls short of the projection because the non-matmul work got slower under "
            f"autocast: {p['bf16_rest_ms']:.0f} ms against {p['rest_ms']:.0f} in fp32. "
        )
    needed, share = p["rest_speedup_needed"], p["rest_share_at_2x_needed"]
    if needed is None:
        return text + f"{TARGET_SPEEDUP}x is out of reach: the bf16 matmuls alone take more than its whole budget."
    if needed <= 1:
        return text + f"{TARGET_SPEEDUP}x is reachable by bf16 matmuls alone."
    text += (
        f"{TARGET_SPEEDUP}x is not reachable by matmuls alone: the non-matmul {p['rest_ms']:.0f} ms would have "
        f"to run {needed:.2f}x faster"
    )
    if share > 1:
        return text + f", more than the {ELEMENTWISE_GAIN:.0f}x that halving the bytes of memory-bound work can give."
    return text + f", e.g. {share:.0%} of it at {ELEMENTWISE_GAIN:.0f}x (elementwise work in bf16, half the bytes)."


def mode_section(title: str, figures: dict) -> list[str]:
    """Steps, profile, projection, groups and patterns of one mode."""
    lines = [f"## {title}", ""]
    lines += steps_table(figures["steps"], figures["profile"])
    lines += groups_table(figures["groups"])
    lines += patterns_table(figures["patterns"])
    if figures["casts"]:
        lines += casts_lines(figures["casts"], figures["projection"])
    return lines


def steps_table(steps: dict, profile: dict) -> list[str]:
    """Measured steps and the profiler's matmul share."""
    lines = [
        (
            "| precision | ms per step, best pass (median) | target tokens/s | first pass (new shapes), ms per step "
            "| profiled: ms per step | matmul self time, ms | casts, ms | matmul share |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for precision, s in steps.items():
        pr = profile[precision]
        lines.append(
            f"| {precision} | {s['step_ms']:.0f} ({s['median_step_ms']:.0f}) | {s['tokens_per_s']:,.0f} | "
            f"{s['first_pass_step_ms']:.0f} | {pr['step_ms']:.0f} | {pr['matmul_ms']:.0f} | {pr['cast_ms']:.0f} | "
            f"{pr['matmul_share']:.0%} |"
        )
    if "bf16" in steps:
        speedup = steps["fp32"]["step_ms"] / steps["bf16"]["step_ms"]
        lines += ["", f"Measured step speedup of bf16 autocast: **{speedup:.2f}x**."]
    return [*lines, ""]


def groups_table(groups: dict) -> list[str]:
    """Matmul ms per step by group: fp32, bf16, bf16 with casts."""
    lines = [
        "| matmuls | calls per step | fp32 ms | bf16 ms | bf16 + casts ms | bf16 speedup | with casts |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, g in groups.items():
        ms = g["ms_per_step"]
        label = f"**{name}**" if name == "all matmuls" else name
        lines.append(
            f"| {label} | {g['calls_per_step'].get('fp32', 0):,.0f} | {ms.get('fp32', 0):.1f} | "
            f"{fmt(ms.get('bf16'))} | {fmt(ms.get('bf16+casts'))} | {fmt(g.get('speedup_bf16'), 'x')} | "
            f"{fmt(g.get('speedup_bf16_with_casts'), 'x')} |"
        )
    return [*lines, ""]


def fmt(value: float | None, unit: str = "") -> str:
    """A table figure, or a dash when not measured."""
    return "-" if value is None else f"{value:.2f}{unit}" if unit else f"{value:.1f}"


def patterns_table(rows: list[dict], top: int = 16) -> list[str]:
    """The most expensive shapes (B batch rows, S source and T target positions, N real target tokens)."""
    lines = [
        (
            f"Shapes, the {min(top, len(rows))} most expensive in fp32 of {len(rows)} (B: sentences, S / T: source / "
            "target positions, N: real target tokens; ms and calls per step, averaged over the batches):"
        ),
        "",
        "| shape | calls | fp32 ms | bf16 ms | bf16 + casts ms | bf16 speedup | with casts |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows[:top]:
        ms = row["ms_per_step"]
        lines.append(
            f"| `{row['pattern']}` | {row['calls_per_step'].get('fp32', 0):,.1f} | {ms.get('fp32', 0):.2f} | "
            f"{fmt(ms.get('bf16'))} | {fmt(ms.get('bf16+casts'))} | {fmt(row.get('speedup_bf16'), 'x')} | "
            f"{fmt(row.get('speedup_bf16_with_casts'), 'x')} |"
        )
    return [*lines, ""]


def casts_lines(casts: dict, p: dict) -> list[str]:
    """The casts autocast adds, and the projection's figures."""
    weights = casts["weight_shaped"]
    most = "; ".join(f"{w['shape']} {w['direction']} {w['per_step']:,.0f}x" for w in weights["most_cast"])
    lines = [
        (
            f"Casts per step under autocast: {casts['charged_to_matmuls']['per_step']:,.0f} feeding or leaving "
            f"matmuls ({casts['charged_to_matmuls']['ms_per_step']:.1f} ms), {casts['other']['per_step']:,.0f} "
            f"others ({casts['other']['ms_per_step']:.1f} ms); of all casts, {weights['per_step']:,.0f} are of "
            f"weight-shaped tensors ({weights['ms_per_step']:.1f} ms; most cast: {most})."
        ),
        "",
    ]
    if p["consistent"]:
        lines += [
            (
                f"Amdahl: fp32 step {p['fp32_step_ms']:.0f} ms, of which matmuls {p['matmul_share_fp32']:.0%} and "
                f"the rest {p['rest_ms']:.0f} ms. With bf16 matmuls ({p['matmul_speedup_bf16']:.2f}x) the step would "
                f"speed up {p['projected_speedup']:.2f}x ({p['projected_speedup_with_casts']:.2f}x with the casts); "
                f"measured {p['measured_speedup']:.2f}x, in which the non-matmul rest took {p['bf16_rest_ms']:.0f} "
                f"ms (fp32: {p['rest_ms']:.0f})."
            ),
            "",
        ]
    return lines


def elementwise_section(rows: list[dict] | None) -> list[str]:
    """fp32 against bf16 elementwise ops at the model's sizes (what the non-matmul rest is made of)."""
    if not rows:
        return []
    lines = [
        "## Elementwise work in bf16 (the non-matmul rest), first batch's sizes, microseconds per op",
        "",
        "| tensor | op | fp32 us | bf16 us | bf16 speedup |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['tensor']} | {row['op']} | {row['fp32_us']:,.1f} | {row['bf16_us']:,.1f} | "
            f"{row['speedup_bf16']:.2f}x |"
        )
    return [*lines, ""]


def memory_section(memory: list[dict]) -> list[str]:
    """Peak RSS of each variant, saved-for-backward bytes, and the largest allocators."""
    if not memory:
        return []
    lines = [
        f"## Memory ({memory[0].get('steps', '?')} updates on new batches, fast path, one process per variant)",
        "",
        "| variant | peak RSS MiB | RSS before the steps MiB | ms per step | saved for backward, MiB (largest step) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for m in memory:
        saved = ", ".join(f"{k} {v:.0f}" for k, v in m["saved_for_backward_mib"].items())
        lines.append(
            f"| {m['variant']} | {m['peak_rss_mib']:,.0f} | {m['rss_before_steps_mib']:,.0f} | "
            f"{m['step_ms_new_batches']:,.0f} | {saved} |"
        )
    lines.append("")
    for m in memory:
        if "allocations_per_step_mib" in m:
            a = m["allocations_per_step_mib"]
            largest = ", ".join(f"{k} {v:,.0f}" for k, v in a["largest"].items())
            lines.append(f"- {m['variant']}: one step allocates {a['total']:,.0f} MiB (net of frees); {largest}.")
    return [*lines, ""]


# --- main -------------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict:
    """CPU facts, both modes, and memory."""
    results: dict = {"cpu": cpu_facts(), "batches": args.batches, "rounds": args.rounds}
    bf16 = results["cpu"]["native_bf16"]
    if not bf16:
        results["bf16_skipped"] = (
            f"this CPU ({results['cpu']['capability']}) has no native bf16: PyTorch would emulate bf16 matmuls, "
            "many times slower than fp32, so only fp32 is measured"
        )
        log.warning("Skipping every bf16 timing: %s", results["bf16_skipped"])
    timings: dict = {}
    results["modes"] = {}
    with tempfile.TemporaryDirectory(prefix="bf16-shapes-") as work:  # the run directories builders want
        for mode, input_feeding in MODES.items():
            log.info("mode %s", mode)
            results["modes"][mode] = measure_mode(Path(work), input_feeding, args, bf16, timings)
    fast = results["modes"]["fast_path"]
    sizes = {**fast["batches"][0], **fast["model"]}
    results["elementwise"] = elementwise_probe(sizes, args.repeats) if bf16 else None
    results["memory"] = [{"steps": args.memory_steps, **m} for m in measure_memory(args.memory_steps, bf16)]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=4, help="real batches per pass (timed and captured)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating passes per precision")
    parser.add_argument("--repeats", type=int, default=5, help="samples per shape (the best counts)")
    parser.add_argument("--memory-steps", type=int, default=30, help="updates per memory variant")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="2 batches, 1 round, 8 memory steps; never published")
    parser.add_argument("--output", default=str(ROOT / "docs" / "bf16_shapes"), help="writes OUTPUT.json and .md")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.batches, args.rounds, args.repeats, args.memory_steps = 2, 1, 3, 8
    results = provenance(sys.argv)
    output = Path(args.output)
    if results["dirty"] or args.quick:  # docs/ holds only full runs of committed code
        output = Path(tempfile.mkdtemp(prefix="bf16-shapes-results-")) / output.name
        log.warning("Not publishing to docs/ (uncommitted changes or --quick): writing %s", output)
    results.update(measure(args))
    write_results(results, output, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
