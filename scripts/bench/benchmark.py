#!/usr/bin/env python3
"""Side-by-side benchmark against Joey NMT 2.3.0 and OpenNMT-py 3.5.1 on this machine, in one run.

    python scripts/bench/benchmark.py                  # full run (about 100 minutes on 2 CPU cores)
    python scripts/bench/benchmark.py --publish        # the same, then docs/benchmark.{json,md} and the README
    python scripts/bench/benchmark.py --quick          # a few minutes, for iterating (never published)
    python scripts/bench/benchmark.py --device cuda    # the GPU mode (docs/benchmark-cuda.{json,md})

Without --publish the results go to .cache/bench/ (or --output). --publish is refused unless the run is
a full one from a tree without uncommitted changes, and it publishes only if HEAD is still that commit
at the end: the committed figures are the ones the committed code produced, written as they came out.

What it does, every measurement on its own (never two trainings at once):
1. sets up each peer in its own virtual environment under the work directory, pinned to the torch
   installed here, so that nothing downloads another torch;
2. records the machine (CPU model and capability, bf16 support, versions) and measures its matmul
   peak: fp32, and bf16 where the CPU computes bf16 natively (elsewhere bf16 is skipped, with the
   reason in the JSON, since it would be emulated and crawl);
3. trains ours (input feeding and the fast path, fp32 and bf16) and each peer (configs equivalent to
   configs/quickstart.yaml with input feeding: same SentencePiece model and vocabulary, sizes, additive
   attention, input feeding, dropout, token batches, optimizer and schedule) for the same number of
   updates: target tokens/s (median of the logged intervals after the first) and peak RSS;
4. trains each peer and ours for the same wall-clock budget, then decodes the dev set greedily with
   each one's final weights: dev BLEU (sacreBLEU, detokenized, the same references, scored here);
5. decodes the test split with those weights, greedy and beam 5: sentences/s (each tool's own timing
   of its decoding loop, model loading excluded); ours also in bf16 and with int8 weights;
6. counts our matmul FLOPs per target token (torch.utils.flop_counter on real batches, forward +
   backward) to give our training GFLOP/s as a share of the measured peak;
7. computes the ratios against each peer and checks the targets against the faster peer per figure,
   and writes OUTPUT.json and OUTPUT.md (rendered from the JSON alone: `markdown(results)`).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import joey
import opennmt
import ours
import sacrebleu
import torch
import yaml
from experiments import commit, cpu_model, replace_between_markers
from processes import ROOT, Run

sys.path.insert(0, str(ROOT))  # this tree's seq2seq, whatever the environment has installed
log = logging.getLogger("bench")
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_BEGIN = "<!-- speed table: written by scripts/bench/benchmark.py --publish from docs/benchmark.json -->"
README_END = "<!-- end of speed table -->"
NOT_PUBLISHED = (
    f"{README_BEGIN}\n\nNo run beside both peers is published yet: `python scripts/bench/benchmark.py --publish` "
    "writes this table. The last published run, beside Joey NMT only (2026-11-25), is kept as it was committed in "
    "[docs/history/](docs/history/benchmark-2026-11-25.md); some of its fields were edited by hand."
    f"\n\n{README_END}"
)
PEERS = {"joey": f"Joey NMT {joey.JOEY_VERSION}", "opennmt": f"OpenNMT-py {opennmt.OPENNMT_VERSION}"}
DEFAULT_BUDGET_RUNS = ("joey", "opennmt", "ours-fast-fp32")  # what the published targets need
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


# --- variants -----------------------------------------------------------------------------------


def our_variants(device: str, bf16: bool) -> dict[str, dict]:
    """Our training runs: name -> {"overrides": config settings, "cudnn": bool}.

    On a CPU: input feeding and the fast path, in fp32 and (where the CPU has native bf16) bf16 autocast.
    On a GPU: the same in fp32 and bf16, and both fp32 runs once more with cuDNN switched off.
    """
    variants = {
        "ours-if-fp32": {"model.input_feeding": True},
        "ours-fast-fp32": {},
    }
    if bf16:
        variants["ours-if-bf16"] = {"model.input_feeding": True, "train.precision": "bf16"}
        variants["ours-fast-bf16"] = {"train.precision": "bf16"}
    runs = {
        name: {"overrides": {**overrides, "train.device": device}, "cudnn": True}
        for name, overrides in variants.items()
    }
    if device == "cuda":
        for name in ("ours-if-fp32", "ours-fast-fp32"):
            runs[f"{name}-no-cudnn"] = {"overrides": runs[name]["overrides"], "cudnn": False}
    return runs


# --- machine ------------------------------------------------------------------------------------


def cpu_facts() -> dict:
    """CPU model, PyTorch's capability level, the instruction-set flags that decide bf16 and matmul speed."""
    from seq2seq.device import native_bf16

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "native_bf16": native_bf16(),
    }


def machine_facts(device: str) -> dict:
    """What a reader needs to compare figures across machines: CPU, GPU, versions, threads."""
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {
        **cpu_facts(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sacrebleu": sacrebleu.__version__,
        "peers": dict(PEERS),
        "gpu": gpu,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
    }


def matmul_peak_gflops(dtype: torch.dtype, device: str = "cpu", size: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of a size x size matmul in `dtype` on `device`, after a warm-up."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# --- scoring ------------------------------------------------------------------------------------


def split_files(work: Path, split: str, limit: int | None) -> tuple[Path, Path]:
    """The source and reference files of a split, cut to `limit` lines (quick mode)."""
    config = yaml.safe_load(BASE_CONFIG.read_text())["data"]
    src, ref = ROOT / f"{config[split]}.{config['src_lang']}", ROOT / f"{config[split]}.{config['tgt_lang']}"
    if limit is None:
        return src, ref
    cut = []
    for path in (src, ref):
        target = work / "data" / f"{split}{limit}{path.suffix}"
        target.parent.mkdir(exist_ok=True)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:limit]
        target.write_text("".join(lines), encoding="utf-8")
        cut.append(target)
    return cut[0], cut[1]


def mean_words(hypotheses: Path) -> float:
    """Mean words per hypothesis: degenerate, over-long outputs make decoding slower."""
    lines = hypotheses.read_text(encoding="utf-8").splitlines()
    return sum(len(line.split()) for line in lines) / max(len(lines), 1)


def bleu_of(hypotheses: Path, references: Path) -> float:
    """Corpus BLEU (sacreBLEU defaults: 13a, detokenized) of a hypotheses file."""
    hyps = hypotheses.read_text(encoding="utf-8").splitlines()
    refs = references.read_text(encoding="utf-8").splitlines()
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def scored(result: dict, references: Path) -> dict:
    """A decoding result with its BLEU and mean output length, paths as strings (for the JSON)."""
    hypotheses = Path(result["hypotheses"])
    return {
        **result,
        "hypotheses": str(hypotheses),
        "bleu": bleu_of(hypotheses, references),
        "mean_output_words": mean_words(hypotheses),
    }


def run_record(run: Run) -> dict:
    """A training run as it goes into the JSON."""
    return {
        "tokens_per_s": run.tokens_per_s,
        "peak_rss_gib": run.peak_rss_gib,
        "updates": run.updates,
        "seconds": run.seconds,
        **run.extra,
    }


# --- the runs -----------------------------------------------------------------------------------


class Peers:
    """The peers' environments and configs, set up once per benchmark run."""

    def __init__(self, work: Path, names: list[str], spm_model: Path, quick: bool, device: str):
        self.work, self.quick, self.device = work, quick, device
        self.spm_model = spm_model
        self.python = {}
        self.vocabulary = {}
        for name in names:
            setup = {
                "joey": (joey.joey_python, joey.joey_vocabulary),
                "opennmt": (opennmt.opennmt_python, opennmt.opennmt_vocabulary),
            }
            make_python, make_vocabulary = setup[name]
            self.python[name] = make_python(work)
            self.vocabulary[name] = make_vocabulary(work, spm_model)

    def config(self, peer: str, name: str, updates: int | None) -> Path:
        """The peer's config equivalent to ours, for `updates` (None: until interrupted)."""
        make = {"joey": joey.joey_config, "opennmt": opennmt.opennmt_config}[peer]
        return make(self.work, name, self.spm_model, self.vocabulary[peer], updates, self.quick, device=self.device)

    def train(self, peer: str, config: Path, budget_s: float | None = None) -> Run:
        """Train the peer with `config`, for its updates or for budget_s seconds of training."""
        train = {"joey": joey.train_joey, "opennmt": opennmt.train_opennmt}[peer]
        return train(self.python[peer], self.work, config, budget_s)

    def decoder(self, peer: str, config: Path, checkpoint: str):
        """decode(src, ref, beam, tag) -> result, with the peer's own decoding of `checkpoint`."""
        decode = {"joey": joey.decode_joey, "opennmt": opennmt.decode_opennmt}[peer]
        return functools.partial(decode, self.python[peer], self.work, config, checkpoint)


def fixed_update_runs(args, work: Path, variants: dict, peers_names: list[str], updates: int, log_every: int):
    """Every trainer for the same number of updates: {name: Run}, and the peers (set up on the way)."""
    fixed = {}
    for name, variant in variants.items():
        overrides = {**variant["overrides"], "train.max_steps": updates}
        fixed[name] = ours.train_ours(work, f"{name}-fixed", overrides, log_every=log_every, cudnn=variant["cudnn"])
    spm_model = work / "runs" / "ours-if-fp32-fixed" / "spm.joint.model"
    peers = Peers(work, peers_names, spm_model, args.quick, args.device)
    for peer in peers_names:
        fixed[peer] = peers.train(peer, peers.config(peer, f"{peer}-fixed", updates))
    for run in fixed.values():
        log.info(
            "fixed %s: %.0f tokens/s, %.2f GiB, %s updates", run.name, run.tokens_per_s, run.peak_rss_gib, run.updates
        )
    return fixed, peers


def budget_runs(args, work: Path, variants: dict, peers: Peers, budget_s: float, limit: int | None, log_every: int):
    """Every trainer named in --budget-runs for the same wall-clock budget, then its dev BLEU and test decoding."""
    dev_src, dev_ref = split_files(work, "dev", limit)
    test_src, test_ref = split_files(work, "test", limit)
    device_option = ("--device", args.device)
    budget, decoding = {}, {}
    for name in budget_names(args):
        if name in PEERS:
            config = peers.config(name, f"{name}-budget", None)
            run = peers.train(name, config, budget_s)
            decode = peers.decoder(name, config, run.extra["checkpoint"])
        else:
            variant = variants[name]
            run = ours.train_ours(work, f"{name}-budget", variant["overrides"], budget_s, log_every, variant["cudnn"])
            decode = functools.partial(ours.decode_ours, work, run.extra["checkpoint"], options=device_option)
        run.extra["dev_bleu"] = bleu_of(Path(decode(dev_src, dev_ref, 1, f"{name}-dev-greedy")["hypotheses"]), dev_ref)
        budget[name] = run
        decoding[name] = {
            f"beam{beam}": scored(decode(test_src, test_ref, beam, f"{name}-test-beam{beam}"), test_ref)
            for beam in (1, 5)
        }
        log.info(
            "budget %s: %s updates, dev BLEU %.2f; test greedy %.1f sent/s, beam5 %.1f sent/s",
            name,
            run.updates,
            run.extra["dev_bleu"],
            decoding[name]["beam1"]["sentences_per_s"],
            decoding[name]["beam5"]["sentences_per_s"],
        )
    if "ours-fast-fp32" in budget:
        checkpoint = budget["ours-fast-fp32"].extra["checkpoint"]
        for label, options in lower_precision_decoding(args.device, variants):
            for beam in (1, 5):
                tag = f"ours-fast-fp32-test-beam{beam}-{label}"
                result = ours.decode_ours(
                    work, checkpoint, test_src, test_ref, beam, tag, options=(*device_option, *options)
                )
                decoding["ours-fast-fp32"][f"beam{beam}-{label}"] = scored(result, test_ref)
    return budget, decoding


def budget_names(args: argparse.Namespace) -> list[str]:
    """The trainings named by --budget-runs ('' for none: only the fixed-update runs)."""
    return [name for name in args.budget_runs.split(",") if name]


def lower_precision_decoding(device: str, variants: dict) -> list[tuple[str, tuple[str, ...]]]:
    """The fp32 weights decoded once more: bf16 autocast (where bf16 runs here) and int8 weights (CPU only)."""
    modes = []
    if "ours-fast-bf16" in variants:
        modes.append(("bf16", ("--precision", "bf16")))
    if device == "cpu":
        modes.append(("int8", ("--quantize", "int8")))
    return modes


def flops_runs(work: Path, variants: dict) -> dict[str, float]:
    """Matmul FLOPs per target token of our fp32 models (counted on the CPU: the count does not depend on the device)."""
    names = ("ours-if-fp32", "ours-fast-fp32")
    return {
        name: ours.flops_per_target_token(work, {**variants[name]["overrides"], "train.device": "cpu"})
        for name in names
    }


# --- ratios and targets -------------------------------------------------------------------------


def peer_ratios(results: dict, peer: str) -> dict[str, float]:
    """Ours against one peer: tokens/s and memory over the fixed updates; BLEU and decoding after the budget."""
    fixed, budget, decoding = results["fixed_updates"]["runs"], results["budget"]["runs"], results["decoding"]
    ratios = {}
    speeds = {
        "train_tokens_per_s": "ours-if-fp32",
        "train_tokens_per_s_fast": "ours-fast-fp32",
        "train_tokens_per_s_bf16": "ours-if-bf16",
        "train_tokens_per_s_fast_bf16": "ours-fast-bf16",
    }
    for key, name in speeds.items():
        if name in fixed:
            ratios[key] = fixed[name]["tokens_per_s"] / fixed[peer]["tokens_per_s"]
    ratios["peak_rss"] = fixed["ours-fast-fp32"]["peak_rss_gib"] / fixed[peer]["peak_rss_gib"]
    ratios["peak_rss_input_feeding"] = fixed["ours-if-fp32"]["peak_rss_gib"] / fixed[peer]["peak_rss_gib"]
    if peer in budget and "ours-fast-fp32" in budget:
        ours_decoding, peer_decoding = decoding["ours-fast-fp32"], decoding[peer]
        ratios["dev_bleu_delta"] = budget["ours-fast-fp32"]["dev_bleu"] - budget[peer]["dev_bleu"]
        ratios["greedy_sent_per_s"] = (
            ours_decoding["beam1"]["sentences_per_s"] / peer_decoding["beam1"]["sentences_per_s"]
        )
        ratios["beam5_sent_per_s"] = (
            ours_decoding["beam5"]["sentences_per_s"] / peer_decoding["beam5"]["sentences_per_s"]
        )
    if peer in budget and "ours-if-fp32" in budget:
        ratios["dev_bleu_delta_input_feeding"] = budget["ours-if-fp32"]["dev_bleu"] - budget[peer]["dev_bleu"]
    return {key: round(value, 3) for key, value in ratios.items()}


def own_ratios(results: dict) -> dict[str, float]:
    """Ours against ours: the matmul peak share, bf16 against fp32 training, bf16 and int8 against fp32 decoding."""
    fixed, decoding = results["fixed_updates"]["runs"], results["decoding"].get("ours-fast-fp32", {})
    peak = results["matmul_peak_gflops"]["fp32"]
    ratios = {
        "matmul_peak_share": results["training_gflops"]["ours-fast-fp32"] / peak,
        "matmul_peak_share_input_feeding": results["training_gflops"]["ours-if-fp32"] / peak,
    }
    if "ours-fast-bf16" in fixed:
        ratios["bf16_train_tokens_per_s"] = (
            fixed["ours-fast-bf16"]["tokens_per_s"] / fixed["ours-fast-fp32"]["tokens_per_s"]
        )
        ratios["bf16_train_tokens_per_s_input_feeding"] = (
            fixed["ours-if-bf16"]["tokens_per_s"] / fixed["ours-if-fp32"]["tokens_per_s"]
        )
        ratios["bf16_peak_rss"] = fixed["ours-fast-bf16"]["peak_rss_gib"] / fixed["ours-fast-fp32"]["peak_rss_gib"]
    for label in ("bf16", "int8"):
        for beam in (1, 5):
            lower, full = decoding.get(f"beam{beam}-{label}"), decoding.get(f"beam{beam}")
            if lower and full:
                name = "greedy" if beam == 1 else "beam5"
                ratios[f"{label}_{name}_sent_per_s"] = lower["sentences_per_s"] / full["sentences_per_s"]
                ratios[f"{label}_{name}_bleu_delta"] = lower["bleu"] - full["bleu"]
    return {key: round(value, 3) for key, value in ratios.items()}


# (figure, key in the ratios, comparison, target): peer figures hold against the faster peer, i.e. the
# least favourable ratio over the peers; the others compare ours with ours.
PEER_TARGETS = [
    ("training tokens/s, input feeding", "train_tokens_per_s", ">=", 3.0),
    ("training tokens/s, fast path", "train_tokens_per_s_fast", ">=", 5.0),
    ("greedy decoding sentences/s", "greedy_sent_per_s", ">=", 6.0),
    ("beam-5 decoding sentences/s", "beam5_sent_per_s", ">=", 6.0),
    ("peak memory while training (fast path)", "peak_rss", "<=", 0.5),
    ("dev BLEU after the budget (fast path), difference", "dev_bleu_delta", ">=", 10.0),
]
OWN_TARGETS = [
    ("fp32 training matmul GFLOP/s / measured matmul peak, fast path", "matmul_peak_share", ">=", 0.60),
    ("same, input feeding", "matmul_peak_share_input_feeding", ">=", 0.45),
    ("bf16 training tokens/s / fp32, fast path", "bf16_train_tokens_per_s", ">=", 1.4),
    ("bf16 peak memory / fp32, fast path", "bf16_peak_rss", "<=", 1.2),
    ("int8 beam-5 decoding sentences/s / fp32", "int8_beam5_sent_per_s", ">=", 1.5),
    ("int8 beam-5 test BLEU - fp32", "int8_beam5_bleu_delta", ">=", -0.5),
]


def targets(ratios: dict) -> list[dict]:
    """Each target with its measured value (against the faster peer where peers are compared) and whether it is met."""
    rows = []
    peers = [peer for peer in PEERS if peer in ratios]
    for figure, key, comparison, target in PEER_TARGETS:
        values = {peer: ratios[peer][key] for peer in peers if key in ratios[peer]}
        if not values:
            continue
        worst = min if comparison == ">=" else max  # the least favourable ratio is the one against the faster peer
        against = worst(values, key=values.__getitem__)
        rows.append(_target_row(figure, key, comparison, target, values[against], against))
    for figure, key, comparison, target in OWN_TARGETS:
        if key in ratios["ours"]:
            rows.append(_target_row(figure, key, comparison, target, ratios["ours"][key], None))
    return rows


def _target_row(figure: str, key: str, comparison: str, target: float, value: float, against: str | None) -> dict:
    met = value >= target if comparison == ">=" else value <= target
    return {
        "figure": figure,
        "key": key,
        "target": f"{comparison} {target:g}",
        "value": value,
        "against": against,
        "met": met,
    }


# --- the report ---------------------------------------------------------------------------------


def _title(name: str) -> str:
    return PEERS.get(name, name)


def markdown(results: dict) -> str:
    """The whole report page, rendered from the JSON alone (a test renders the committed JSON and compares)."""
    machine, peak = results["machine"], results["matmul_peak_gflops"]
    peers = [peer for peer in PEERS if peer in results["ratios"]]
    peak_text = ", ".join(f"{dtype} {value:.0f} GFLOP/s" for dtype, value in peak.items())
    lines = [
        (
            f"# seq2seq {'beside ' + ' and '.join(_title(p) for p in peers) if peers else 'alone'} "
            f"({results['mode']} run on {results['device']}, {results['date']})"
        ),
        "",
        f"Machine: {machine['cpu']} ({machine['cores']} cores, PyTorch CPU capability {machine['cpu_capability']}, "
        f"native bf16: {'yes' if machine['native_bf16'] else 'no'})"
        + (f", GPU {machine['gpu']} (cuDNN {machine['cudnn']})" if machine.get("gpu") else "")
        + f"; torch {machine['torch']}, Python {machine['python']}. Matmul peak measured in this run: {peak_text}.",
        "",
        f"Command: `{results['command']}` at commit {results['commit']}"
        + (" (with uncommitted changes)" if results["dirty"] else "")
        + f". Wall time {results['minutes']:.0f} minutes.",
        "",
    ]
    lines += [f"Skipped: {reason}" for reason in results["skipped"]]
    lines += _training_table(results, peers) + _budget_table(results) + _lower_precision_lines(results)
    lines += _targets_table(results) + _ceiling_lines(results) + _ratio_tables(results, peers)
    flops = results["flops_per_target_token"]
    lines += [
        "",
        "FLOPs per target token (matmuls only, forward + backward, counted with torch.utils.flop_counter on 4 real "
        "training batches): " + ", ".join(f"{name} {value / 1e6:.1f} M" for name, value in flops.items()) + ".",
        "",
    ]
    return "\n".join(lines)


def _training_table(results: dict, peers: list[str]) -> list[str]:
    fixed, gflops = results["fixed_updates"]["runs"], results["training_gflops"]
    peak = results["matmul_peak_gflops"]["fp32"]
    columns = ["run", "target tokens/s", *(f"vs {p}" for p in peers), "peak RSS GiB", "matmul GFLOP/s (share of peak)"]
    lines = [
        "",
        f"## Training, {results['fixed_updates']['updates']} updates each",
        "",
        _row(columns),
        "|---|" + "---:|" * (len(columns) - 1),
    ]
    for name, run in fixed.items():
        versus = [f"{run['tokens_per_s'] / fixed[p]['tokens_per_s']:.2f}x" for p in peers]
        share = f"{gflops[name]:.0f} ({gflops[name] / peak:.0%})" if name in gflops else ""
        lines.append(_row([_title(name), f"{run['tokens_per_s']:,.0f}", *versus, f"{run['peak_rss_gib']:.2f}", share]))
    return lines


def _row(cells: list[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _budget_table(results: dict) -> list[str]:
    budget, decoding = results["budget"]["runs"], results["decoding"]
    if not budget:
        return []
    lines = [
        "",
        f"## Equal wall-clock budget: {results['budget']['minutes']:g} minutes of training each",
        "",
        "| run | updates | dev BLEU | test BLEU greedy | greedy sent/s | test BLEU beam 5 | beam-5 sent/s | words per output (greedy / beam 5) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in budget.items():
        greedy, beam = decoding[name]["beam1"], decoding[name]["beam5"]
        lines.append(
            f"| {_title(name)} | {run['updates']} | {run['dev_bleu']:.2f} | {greedy['bleu']:.2f} | {greedy['sentences_per_s']:.1f} | "
            f"{beam['bleu']:.2f} | {beam['sentences_per_s']:.1f} | {greedy['mean_output_words']:.1f} / {beam['mean_output_words']:.1f} |"
        )
    return lines


def _lower_precision_lines(results: dict) -> list[str]:
    runs = results["decoding"].get("ours-fast-fp32", {})
    labels = {"bf16": "bf16 autocast (`--precision bf16`)", "int8": "int8 weights (`--quantize int8`)"}
    lines = []
    for label, text in labels.items():
        greedy, beam = runs.get(f"beam1-{label}"), runs.get(f"beam5-{label}")
        if greedy and beam:
            lines.append(
                f"Decoding the same ours-fast-fp32 weights with {text}: greedy {greedy['sentences_per_s']:.1f} sentences/s "
                f"(test BLEU {greedy['bleu']:.2f}), beam 5 {beam['sentences_per_s']:.1f} sentences/s (test BLEU {beam['bleu']:.2f})."
            )
    return ["", *lines] if lines else []


def _targets_table(results: dict) -> list[str]:
    lines = ["", "## Targets", "", "| figure | target | measured | against | met |", "|---|---:|---:|---|---|"]
    for row in results["targets"]:
        against = (
            _title(row["against"])
            if row["against"]
            else "ours in fp32"
            if "bf16" in row["key"] or "int8" in row["key"]
            else ""
        )
        lines.append(
            f"| {row['figure']} | {row['target']} | {row['value']:g} | {against} | {'yes' if row['met'] else '**no**'} |"
        )
    return lines


# Our fp32 runs, with the key of their training-speed target among PEER_TARGETS.
SPEED_TARGET_RUNS = {"ours-if-fp32": "train_tokens_per_s", "ours-fast-fp32": "train_tokens_per_s_fast"}


def speed_ceilings(results: dict) -> dict[str, dict]:
    """For each fp32 run: the target tokens/s its training-speed target asks for (the target ratio x the faster
    peer), and the tokens/s it would reach if the whole step ran at this machine's measured fp32 matmul peak
    (its matmul FLOPs per target token and nothing else): a target above that ceiling cannot be met by
    removing overhead, only by fewer FLOPs per token or faster arithmetic."""
    fixed, flops = results["fixed_updates"]["runs"], results["flops_per_target_token"]
    peak = results["matmul_peak_gflops"]["fp32"] * 1e9
    target_ratio = {key: target for _, key, _, target in PEER_TARGETS}
    peers = [peer for peer in PEERS if peer in fixed]
    ceilings = {}
    for name, key in SPEED_TARGET_RUNS.items():
        if name not in fixed or name not in flops or not peers:
            continue
        fastest = max(peers, key=lambda peer: fixed[peer]["tokens_per_s"])
        ceilings[name] = {
            "target_tokens_per_s": target_ratio[key] * fixed[fastest]["tokens_per_s"],
            "against": fastest,
            "ceiling_tokens_per_s": peak / flops[name],
            "measured_tokens_per_s": fixed[name]["tokens_per_s"],
        }
    return ceilings


def _ceiling_lines(results: dict) -> list[str]:
    ceilings = speed_ceilings(results)
    if not ceilings:
        return []
    lines = [
        "",
        "## What the matmul peak allows",
        "",
        (
            "Tokens/s if a whole training step ran at the fp32 matmul peak measured in this run (its matmul FLOPs per "
            "target token, nothing else), beside what the training-speed target asks for:"
        ),
        "",
        "| run | measured | target (x the faster peer) | ceiling at the matmul peak | target / ceiling |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in ceilings.items():
        lines.append(
            f"| {name} | {row['measured_tokens_per_s']:,.0f} | {row['target_tokens_per_s']:,.0f} ({_title(row['against'])}) "
            f"| {row['ceiling_tokens_per_s']:,.0f} | {row['target_tokens_per_s'] / row['ceiling_tokens_per_s']:.2f} |"
        )
    return lines


def _ratio_tables(results: dict, peers: list[str]) -> list[str]:
    ratios = results["ratios"]
    keys = list(dict.fromkeys(key for group in ("ours", *peers) for key in ratios[group] if group != "ours"))
    lines = []
    if peers:
        lines += ["", "## Ratios (`ratios` in the JSON)", "", _row(["ratio", *(f"vs {p}" for p in peers)])]
        lines += ["|---|" + "---:|" * len(peers)]
        lines += [_row([key, *(f"{ratios[p].get(key, '')}" for p in peers)]) for key in keys]
    lines += ["", "| ours against ours | value |", "|---|---:|"]
    lines += [f"| {key} | {value} |" for key, value in ratios["ours"].items()]
    return lines


def readme_section(results: dict) -> str:
    """The README's speed table (between its markers), rendered from the published JSON."""
    peers = [peer for peer in PEERS if peer in results["ratios"]]
    targets_by_key = {row["key"]: row for row in results["targets"]}
    machine = results["machine"]
    lines = [
        README_BEGIN,
        "",
        (
            f"Measured on {machine['cpu']} ({machine['cores']} cores, {results['device']}), {results['date']}, "
            f"commit {results['commit'][:10]}: [docs/benchmark.md](docs/benchmark.md), every figure in "
            "`docs/benchmark.json`."
        ),
        "",
        "| figure | seq2seq | " + " | ".join(_title(p) for p in peers) + " | ours vs the faster peer | target |",
        "| --- | ---: |" + " ---: |" * len(peers) + " ---: | --- |",
    ]
    for figure, values, key in _readme_rows(results, peers):
        row = targets_by_key.get(key)
        cells = [values.get(name, "") for name in ("ours", *peers)]
        verdict = (
            ["", ""]
            if row is None
            else [f"{row['value']:g}", f"{row['target']} ({'met' if row['met'] else '**not met**'})"]
        )
        lines.append("| " + " | ".join([figure, *cells, *verdict]) + " |")
    lines += ["", README_END]
    return "\n".join(lines)


def _readme_rows(results: dict, peers: list[str]) -> list[tuple[str, dict[str, str], str]]:
    """(figure, {"ours" or peer: text}, key of its target) for the README's table."""
    fixed, budget, decoding = results["fixed_updates"]["runs"], results["budget"]["runs"], results["decoding"]

    def per_run(ours_run: str, runs: dict, text) -> dict[str, str]:
        names = {"ours": ours_run, **{peer: peer for peer in peers}}
        return {label: text(runs[name]) for label, name in names.items() if name in runs}

    speed = lambda run: f"{run['tokens_per_s']:,.0f}"
    rows = [
        (
            "training, target tokens/s, input feeding (the equivalent model)",
            per_run("ours-if-fp32", fixed, speed),
            "train_tokens_per_s",
        ),
        (
            "training, target tokens/s, fast path (no input feeding)",
            {"ours": speed(fixed["ours-fast-fp32"])},
            "train_tokens_per_s_fast",
        ),
        (
            "peak memory while training, GiB (ours: fast path)",
            per_run("ours-fast-fp32", fixed, lambda r: f"{r['peak_rss_gib']:.2f}"),
            "peak_rss",
        ),
    ]
    if "ours-fast-fp32" in budget:
        minutes = f"{results['budget']['minutes']:g}"
        rows.append(
            (
                f"dev BLEU after {minutes} minutes of training (ours: fast path)",
                per_run("ours-fast-fp32", budget, lambda r: f"{r['dev_bleu']:.2f}"),
                "dev_bleu_delta",
            )
        )
        for beam, label in ((1, "greedy"), (5, "beam 5")):
            text = lambda d, beam=beam: f"{d[f'beam{beam}']['sentences_per_s']:.1f}"
            rows.append(
                (
                    f"test decoding, {label}, sentences/s",
                    per_run("ours-fast-fp32", decoding, text),
                    "greedy_sent_per_s" if beam == 1 else "beam5_sent_per_s",
                )
            )
    for row in results["targets"]:
        if row["against"] is None:
            rows.append((row["figure"], {}, row["key"]))  # ours against ours: the value is the ratio
    return rows


# --- main ---------------------------------------------------------------------------------------


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few minutes: fewer updates, a short budget (never published)"
    )
    parser.add_argument("--publish", action="store_true", help="write docs/benchmark.{json,md} and the README's table")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--updates", type=int, help="updates of the fixed-update runs (full 150, quick 20)")
    parser.add_argument("--budget", type=float, help="wall-clock training budget in minutes (full 20, quick 1)")
    parser.add_argument("--peers", default="joey,opennmt", help="peers to run: " + ", ".join(PEERS))
    parser.add_argument(
        "--budget-runs",
        default=",".join(DEFAULT_BUDGET_RUNS),
        help="trainings that get the wall-clock budget: peers and any of our runs (e.g. ours-if-fp32)",
    )
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"), help="scratch directory")
    parser.add_argument("--output", help="writes OUTPUT.json and OUTPUT.md (default: WORK/benchmark[-cuda])")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="measure nothing: write JSON's report (.md beside it) and, for docs/benchmark.json, the README's table",
    )
    return parser.parse_args(argv)


def publish_refusal(args: argparse.Namespace, state: dict) -> str | None:
    """Why --publish cannot publish this run (None: it can)."""
    if args.quick or args.updates or args.budget:
        return "--publish needs a full run: drop --quick, --updates and --budget"
    if args.output:
        return "--publish writes to docs/: drop --output"
    if missing := [name for name in DEFAULT_BUDGET_RUNS if name not in budget_names(args)]:
        return f"--publish needs the budget runs of {', '.join(DEFAULT_BUDGET_RUNS)} (missing: {', '.join(missing)})"
    if state["dirty"]:
        return "--publish needs a tree without uncommitted changes: commit or stash them first"
    return None


def check_arguments(args: argparse.Namespace) -> str | None:
    """A user mistake in the arguments, as one line (None: fine)."""
    peers = [name for name in args.peers.split(",") if name]
    if unknown := [name for name in peers if name not in PEERS]:
        return f"--peers: unknown peer {unknown[0]!r}: choose from {', '.join(PEERS)}"
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda but no CUDA GPU is visible: run on a machine with one, or drop --device"
    ours_names = set(our_variants(args.device, bf16=True))
    for name in budget_names(args):
        if name not in PEERS and name not in ours_names:
            return f"--budget-runs: unknown run {name!r}: choose from {', '.join([*PEERS, *sorted(ours_names)])}"
        if name in PEERS and name not in peers:
            return f"--budget-runs names {name}, which --peers leaves out"
    for value, flag in ((args.updates, "--updates"), (args.budget, "--budget")):
        if value is not None and not (value > 0 and value < float("inf")):
            return f"{flag} must be a positive number, not {value}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.render:
        return render(Path(args.render))
    state = commit()
    problem = check_arguments(args) or (publish_refusal(args, state) if args.publish else None)
    if problem:
        print(f"benchmark: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    results = run_benchmark(args, work, state)
    results["minutes"] = (time.monotonic() - started) / 60
    complete_results(results)
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    output = Path(args.output) if args.output else work / f"benchmark{suffix}"
    if args.publish:
        if commit() != state:
            log.warning("The tree changed during the run (%s): not publishing", commit())
        else:
            output = DOCS / f"benchmark{suffix}"
    write(results, output, readme=args.publish and output.parent == DOCS and args.device == "cpu")
    return 0


def render(path: Path) -> int:
    """Write the report of a results JSON again (after a change to the rendering, or in another clone)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"benchmark: --render {path}: cannot read it as JSON ({error})", file=sys.stderr)
        return 2
    write(results, path.with_suffix(""), readme=path.resolve() == (DOCS / "benchmark.json").resolve(), rewrite=False)
    return 0


def run_benchmark(args: argparse.Namespace, work: Path, state: dict) -> dict:
    """Every measurement, one after the other: the results without their ratios."""
    machine = machine_facts(args.device)
    bf16 = args.device == "cuda" or machine["native_bf16"]
    results = {
        "date": datetime.date.today().isoformat(),
        "mode": "quick" if args.quick else "full",
        "device": args.device,
        "command": " ".join(["python", "scripts/bench/benchmark.py", *sys.argv[1:]]),
        **state,
        "machine": machine,
        "skipped": [],
        "matmul_peak_gflops": {"fp32": matmul_peak_gflops(torch.float32, args.device)},
    }
    if bf16:
        results["matmul_peak_gflops"]["bf16"] = matmul_peak_gflops(torch.bfloat16, args.device)
    else:
        reason = f"bf16 (matmul peak, training, decoding): this CPU ({machine['cpu_capability']}) has no native bf16 and would emulate it"
        log.warning("Skipping %s", reason)
        results["skipped"].append(reason)
    log.info("matmul peak: %s GFLOP/s", {k: round(v) for k, v in results["matmul_peak_gflops"].items()})
    updates = args.updates or (20 if args.quick else 150)
    budget_s = 60 * (args.budget or (1 if args.quick else 20))
    log_every = 5 if args.quick else 25
    variants = our_variants(args.device, bf16)
    peer_names = [name for name in args.peers.split(",") if name]
    fixed, peers = fixed_update_runs(args, work, variants, peer_names, updates, log_every)
    results["fixed_updates"] = {"updates": updates, "runs": {name: run_record(run) for name, run in fixed.items()}}
    limit = 200 if args.quick else None
    budget, decoding = budget_runs(args, work, variants, peers, budget_s, limit, log_every)
    results["budget"] = {"minutes": budget_s / 60, "runs": {name: run_record(run) for name, run in budget.items()}}
    results["decoding"] = decoding
    results["flops_per_target_token"] = flops_runs(work, variants)
    return results


def complete_results(results: dict) -> None:
    """Add the training GFLOP/s, the ratios against each peer and against ours, and the targets."""
    fixed = results["fixed_updates"]["runs"]
    flops = results["flops_per_target_token"]
    results["training_gflops"] = {name: flops[name] * fixed[name]["tokens_per_s"] / 1e9 for name in flops}
    peers = [name for name in PEERS if name in fixed]
    results["ratios"] = {"ours": own_ratios(results), **{peer: peer_ratios(results, peer) for peer in peers}}
    results["targets"] = targets(results["ratios"])


def write(results: dict, output: Path, readme: bool, rewrite: bool = True) -> None:
    """OUTPUT.json (unless only rendering) and OUTPUT.md as written, never edited by hand, and the README's table."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if rewrite:
        output.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    page = markdown(results)
    output.with_suffix(".md").write_text(page, encoding="utf-8")
    if readme:
        README.write_text(
            replace_between_markers(
                README.read_text(encoding="utf-8"), README_BEGIN, README_END, readme_section(results)
            ),
            encoding="utf-8",
        )
    print(page)
    log.info(
        "Wrote %s%s.md%s", output, ".json and " if rewrite else "", " and the README's speed table" if readme else ""
    )


if __name__ == "__main__":
    sys.exit(main())
