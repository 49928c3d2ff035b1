#!/usr/bin/env python3
"""Side-by-side benchmark against Joey NMT 2.3.0 on this machine, in one run.

    python scripts/bench/versus_joey.py            # full: about 90 minutes on 2 CPU cores
    python scripts/bench/versus_joey.py --quick    # a few minutes, for iterating

What it does, every measurement on its own (never two trainings at once):
1. sets up Joey NMT 2.3.0 in its own virtual environment (.cache/bench/joey-venv), pinned to
   the torch version already installed here, so that nothing downloads another torch;
2. measures this machine's fp32 and bf16 matmul peak (GFLOP/s of a 2048 x 2048 matmul);
3. trains ours (input feeding and fast path, fp32 and bf16) and Joey (an equivalent config
   written from configs/quickstart.yaml: same SentencePiece model and vocabulary, sizes,
   additive attention, input feeding, dropout, token batches, optimizer and schedule) for the
   same number of updates: target tokens/s (median of the logged intervals) and peak RSS;
4. trains Joey, ours with input feeding and ours on the fast path for the same wall-clock
   budget, then decodes the dev set greedily with each one's final weights: dev BLEU
   (sacreBLEU, detokenized, the same references, scored here);
5. decodes the test split with those checkpoints, greedy and beam 5: sentences/s (each tool's
   own timing of its decoding, model loading excluded);
6. counts our model's matmul FLOPs per target token (torch.utils.flop_counter on real
   batches, forward + backward) to give our training GFLOP/s as a share of the peak;
7. prints one table with the ratios and writes it to docs/benchmark.md and docs/benchmark.json.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import sacrebleu
import torch
import yaml

log = logging.getLogger("bench")
JOEY_VERSION = "2.3.0"
BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"


@dataclass
class Run:
    """What one training or decoding process measured."""

    name: str
    seconds: float = 0.0
    peak_rss_gib: float = 0.0
    tokens_per_s: float | None = None
    updates: int | None = None
    extra: dict = field(default_factory=dict)


# --- machine ------------------------------------------------------------------------------------


def machine_facts() -> dict:
    """CPU model, cores, versions: what a reader needs to compare figures across machines."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    return {
        "commit": commit.stdout.strip() or None,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sacrebleu": sacrebleu.__version__,
        "joeynmt": JOEY_VERSION,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best GFLOP/s of a size x size matmul in `dtype` on the CPU, after a warm-up."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


# --- processes ----------------------------------------------------------------------------------


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


# --- ours ---------------------------------------------------------------------------------------


def our_config(work: Path, name: str, overrides: dict) -> Path:
    """The quickstart config with overrides ("section.key": value), written to work/name.yaml."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["name"] = name
    config["train"]["run_dir"] = str(work / "runs" / name)
    for dotted, value in overrides.items():
        node = config
        *parents, key = dotted.split(".")
        for parent in parents:
            node = node[parent]
        node[key] = value
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_ours(work: Path, name: str, overrides: dict, budget_s: float | None = None, log_every: int = 25) -> Run:
    """Train ours for max_steps (in overrides) or for budget_s seconds of training."""
    overrides = {
        "data.dev": None,
        "data.test": None,
        "train.validate_every": 10**9,
        "train.log_every": log_every,
        **overrides,
    }
    if budget_s is not None:
        overrides.update({"train.max_steps": None, "train.max_time": f"{int(budget_s)}s"})
    else:
        overrides["train.max_time"] = None
    config = our_config(work, name, overrides)
    run = run_process([sys.executable, "-m", "seq2seq", "train", str(config), "--force"], work / f"{name}.log")
    run.name = name
    run_dir = work / "runs" / name
    records = (run_dir / "progress.jsonl").read_text().splitlines()
    speeds = [json.loads(line)["tokens_per_s"] for line in records]
    run.tokens_per_s = statistics.median(speeds[1:] or speeds)  # the first interval includes warm-up
    run.updates = json.loads((run_dir / "summary.json").read_text()).get("steps")
    run.extra["checkpoint"] = str(run_dir / "last.pt")
    return run


def decode_ours(work: Path, checkpoint: str, src: Path, ref: Path, beam: int, tag: str, precision="fp32") -> dict:
    """Our decoding of src: hypotheses file, seconds and sentences/s (model loading excluded)."""
    output = work / "hyps" / f"{tag}.txt"
    output.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "seq2seq", "evaluate", checkpoint, "--src", str(src), "--ref", str(ref)]
    command += ["--beam", str(beam), "--alpha", "1.0", "--precision", precision]
    command += ["--output", str(output), "--report", str(output) + ".json"]
    run_process(command, work / f"{tag}.log")
    report = json.loads(Path(str(output) + ".json").read_text())
    return {"hypotheses": output, "seconds": report["seconds"], "sentences_per_s": report["sentences_per_s"]}


def flops_per_target_token(work: Path, overrides: dict, batches: int = 4) -> float:
    """Matmul FLOPs (forward + backward) per real target token, counted on real training batches."""
    from torch.utils.flop_counter import FlopCounterMode

    from seq2seq import builders
    from seq2seq.config import load_config
    from seq2seq.data import collate
    from seq2seq.distributed import ProcessGroup
    from seq2seq.model import sequence_loss
    from seq2seq.rundir import RunDir

    config = load_config(our_config(work, "flops", {"data.dev": None, "data.test": None, **overrides}))
    run_dir = RunDir(config.train.run_dir)
    run_dir.path.mkdir(parents=True, exist_ok=True)
    data = builders.create_training_data(config, ProcessGroup(), run_dir, None)
    model = builders.create_model(config, data.tokenizer, torch.device("cpu"))
    data.sampler.set_epoch(0)
    flops = tokens = 0
    for _, indices in zip(range(batches), data.sampler):
        batch = collate([data.dataset[i] for i in indices])
        with FlopCounterMode(display=False) as counter:
            sequence_loss(model, batch, config.train.label_smoothing).backward()
        flops += counter.get_total_flops()
        tokens += batch.num_tgt_tokens
    return flops / tokens


# --- Joey ---------------------------------------------------------------------------------------


def joey_python(work: Path) -> Path:
    """Joey NMT in its own virtual environment, pinned to our torch version (set up once)."""
    venv = work / "joey-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import joeynmt, torch; print(joeynmt.__version__, torch.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    torch_version = torch.__version__.split("+")[0]
    log.info("Setting up Joey NMT %s with torch %s in %s", JOEY_VERSION, torch_version, venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = work / "joey-constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n")  # no dependency may pull another torch
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints)]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    # Joey imports importlib_metadata without declaring it.
    subprocess.run([*pip, f"joeynmt=={JOEY_VERSION}", "importlib_metadata"], check=True)
    subprocess.run(probe, check=True)
    return python


def joey_vocabulary(work: Path, spm_model: Path) -> Path:
    """Joey's vocabulary file: the SentencePiece model's pieces in id order (so ids agree)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    assert pieces[:4] == ["<unk>", "<pad>", "<s>", "</s>"], pieces[:4]
    path = work / "joey-vocab.txt"
    path.write_text("".join(piece + "\n" for piece in pieces), encoding="utf-8")
    return path


def joey_config(work: Path, name: str, spm_model: Path, vocabulary: Path, updates: int | None, quick: bool) -> Path:
    """A Joey config equivalent to our quickstart config with input feeding."""
    ours = yaml.safe_load(BASE_CONFIG.read_text())
    model, train, data = ours["model"], ours["train"], ours["data"]
    side = {
        "max_length": data["max_src_length"],
        "level": "bpe",
        "tokenizer_type": "sentencepiece",
        "tokenizer_cfg": {"model_file": str(spm_model)},
        "voc_file": str(vocabulary),
        "lowercase": False,
    }
    layers = {
        "rnn_type": "gru",
        "type": "recurrent",
        "hidden_size": model["encoder_hidden_size"],
        "embeddings": {"embedding_dim": model["embedding_size"]},
        "dropout": model["dropout"],
        "num_layers": model["encoder_layers"],
    }
    schedule = train["schedule"]
    config = {
        "name": name,
        "joeynmt_version": JOEY_VERSION,
        "model_dir": str(work / "runs" / name),
        "use_cuda": False,
        "random_seed": train["seed"],
        "data": {
            "train": str(ROOT / data["train"]),
            "dev": str(ROOT / data["dev"]),
            "dataset_type": "plain",
            "src": {"lang": data["src_lang"], **side},
            "trg": {"lang": data["tgt_lang"], **side},
            "special_symbols": {
                "unk_token": "<unk>",
                "unk_id": 0,
                "pad_token": "<pad>",
                "pad_id": 1,
                "bos_token": "<s>",
                "bos_id": 2,
                "eos_token": "</s>",
                "eos_id": 3,
            },
        },
        "testing": {
            "beam_size": 1,
            "beam_alpha": 1.0,
            "batch_size": 4000,
            "batch_type": "token",
            "eval_metrics": ["bleu"],
            "sacrebleu_cfg": {"tokenize": "13a"},
        },
        "training": {
            "optimizer": train["optimizer"],
            "adam_betas": train["adam_betas"],
            "learning_rate": train["lr"],
            "learning_rate_min": schedule["min_lr"],
            "scheduling": "warmupinversesquareroot",
            "learning_rate_warmup": schedule["warmup_steps"],
            "weight_decay": train["weight_decay"],
            "label_smoothing": train["label_smoothing"],
            "clip_grad_norm": train["clip_grad_norm"],
            "loss": "crossentropy",
            "batch_size": train["batch_tokens"],
            "batch_type": "token",
            "normalization": "tokens",
            "epochs": 10_000,
            "updates": updates if updates is not None else 10**9,
            "validation_freq": 10**9,
            "logging_freq": 5 if quick else train["log_every"],
            "early_stopping_metric": "bleu",
            "shuffle": True,
            "overwrite": True,
            "num_workers": 0,
            "keep_best_ckpts": 1,
            "print_valid_sents": [],
        },
        "model": {
            "initializer": "xavier_uniform",
            "bias_initializer": "zeros",
            "encoder": {**layers, "bidirectional": True},
            "decoder": {
                **layers,
                "hidden_size": model["decoder_hidden_size"],
                "num_layers": model["decoder_layers"],
                "hidden_dropout": model["dropout"],
                "input_feeding": True,
                "init_hidden": "bridge",
                "attention": "bahdanau",
            },
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_joey(python: Path, work: Path, config: Path, budget_s: float | None = None) -> Run:
    """Train Joey; tokens/s is the median of its logged intervals after the first."""
    name = config.stem
    model_dir = work / "runs" / name
    train_log = model_dir / "train.log"
    shutil.rmtree(model_dir, ignore_errors=True)  # an old train.log would look like a start

    def began() -> bool:
        return train_log.exists() and "EPOCH 1" in train_log.read_text(errors="replace")

    command = [str(python), str(ROOT / "scripts" / "bench" / "joey_wrapper.py"), "train", str(config), "--skip-test"]
    run = run_process(command, work / f"{name}.log", budget_s, began)
    run.name = name
    text = train_log.read_text(errors="replace")
    speeds = [float(s) for s in re.findall(r"Tokens per Sec:\s*([\d.]+)", text)]
    run.tokens_per_s = statistics.median(speeds[1:] or speeds)
    checkpoints = sorted(model_dir.glob("[0-9]*.ckpt"), key=lambda p: int(p.stem))
    run.extra["checkpoint"] = str(checkpoints[-1])
    run.updates = int(checkpoints[-1].stem)  # Joey names its checkpoints by update
    return run


def decode_joey(
    python: Path, work: Path, train_config: Path, checkpoint: str, src: Path, ref: Path, beam: int, tag: str
) -> dict:
    """Joey's decoding of src (its `test` mode; the caller scores against `ref`): hypotheses, its own timing."""
    config = yaml.safe_load(train_config.read_text())
    prefix = str(src.with_suffix(""))
    config["data"].pop("dev", None)
    config["data"]["test"] = prefix
    config["testing"].update({"beam_size": beam, "load_model": checkpoint})
    path = work / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = work / "hyps" / tag
    output.parent.mkdir(exist_ok=True)
    command = [str(python), str(ROOT / "scripts" / "bench" / "joey_wrapper.py"), "test", str(path)]
    run_process([*command, "--output-path", str(output)], work / f"{tag}.log")
    text = (work / f"{tag}.log").read_text(errors="replace")
    seconds = float(re.findall(r"Generation took ([\d.]+)\[sec\]", text)[-1])
    sentences = len(src.read_text(encoding="utf-8").splitlines())
    return {"hypotheses": Path(f"{output}.test"), "seconds": seconds, "sentences_per_s": sentences / seconds}


# --- the benchmark ------------------------------------------------------------------------------


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


OURS_VARIANTS = {
    "ours-if-fp32": {"model.input_feeding": True},
    "ours-fast-fp32": {},
    "ours-if-bf16": {"model.input_feeding": True, "train.precision": "bf16"},
    "ours-fast-bf16": {"train.precision": "bf16"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer updates, a short budget")
    parser.add_argument("--updates", type=int, help="updates of the fixed-update runs (full 150, quick 20)")
    parser.add_argument("--budget", type=float, help="wall-clock training budget in minutes (full 20, quick 1)")
    parser.add_argument(
        "--budget-runs",
        default="joey,ours-fast-fp32,ours-if-fp32",
        help="which trainings get the wall-clock budget (joey and any of " + ", ".join(OURS_VARIANTS) + ")",
    )
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench"), help="scratch directory")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmark"), help="writes OUTPUT.md and .json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    updates = args.updates or (20 if args.quick else 150)
    budget_s = 60 * (args.budget or (1 if args.quick else 20))
    limit = 200 if args.quick else None
    log_every = 5 if args.quick else 25
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.date.today().isoformat(),
        "mode": "quick" if args.quick else "full",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_facts(),
    }
    python = joey_python(work)
    results["matmul_peak_gflops"] = {
        "fp32": matmul_peak_gflops(torch.float32),
        "bf16": matmul_peak_gflops(torch.bfloat16),
    }
    log.info("matmul peak: %s GFLOP/s", {k: round(v) for k, v in results["matmul_peak_gflops"].items()})

    fixed = {}
    for name, overrides in OURS_VARIANTS.items():
        fixed[name] = train_ours(work, f"{name}-fixed", {**overrides, "train.max_steps": updates}, log_every=log_every)
    spm_model = work / "runs" / "ours-if-fp32-fixed" / "spm.joint.model"
    vocabulary = joey_vocabulary(work, spm_model)
    fixed["joey"] = train_joey(
        python, work, joey_config(work, "joey-fixed", spm_model, vocabulary, updates, args.quick)
    )
    for run in fixed.values():
        log.info(
            "fixed %s: %.0f tokens/s, %.2f GiB, %d updates",
            run.name,
            run.tokens_per_s,
            run.peak_rss_gib,
            run.updates or 0,
        )

    dev_src, dev_ref = split_files(work, "dev", limit)
    test_src, test_ref = split_files(work, "test", limit)
    budget, decoding = {}, {}
    for name in args.budget_runs.split(","):
        if name == "joey":
            config = joey_config(work, "joey-budget", spm_model, vocabulary, None, args.quick)
            run = train_joey(python, work, config, budget_s)
            decode = functools.partial(decode_joey, python, work, config, run.extra["checkpoint"])
        else:
            run = train_ours(work, f"{name}-budget", OURS_VARIANTS[name], budget_s, log_every)
            decode = functools.partial(decode_ours, work, run.extra["checkpoint"])
        dev = decode(dev_src, dev_ref, 1, f"{name}-dev-greedy")
        run.extra["dev_bleu"] = bleu_of(dev["hypotheses"], dev_ref)
        budget[name] = run
        decoding[name] = {}
        for beam in (1, 5):
            result = decode(test_src, test_ref, beam, f"{name}-test-beam{beam}")
            result["bleu"] = bleu_of(result["hypotheses"], test_ref)
            result["mean_output_words"] = mean_words(result["hypotheses"])
            decoding[name][beam] = result
            if name == "ours-fast-fp32":  # decoding in bf16 too, with the same weights
                result = decode(test_src, test_ref, beam, f"{name}-test-beam{beam}-bf16", precision="bf16")
                result["bleu"] = bleu_of(result["hypotheses"], test_ref)
                decoding[name][f"{beam}-bf16"] = result
        log.info(
            "budget %s: %d updates, dev BLEU %.2f; test greedy %.1f sent/s, beam5 %.1f sent/s",
            name,
            run.updates or 0,
            run.extra["dev_bleu"],
            decoding[name][1]["sentences_per_s"],
            decoding[name][5]["sentences_per_s"],
        )

    flops = {name: flops_per_target_token(work, OURS_VARIANTS[name]) for name in ("ours-if-fp32", "ours-fast-fp32")}
    write_report(results, fixed, budget, decoding, flops, updates, budget_s, Path(args.output))
    return 0


def write_report(results, fixed, budget, decoding, flops, updates, budget_s, output: Path) -> None:
    """The table (Markdown) and the JSON with the ratios."""
    peak = results["matmul_peak_gflops"]["fp32"]
    joey = fixed["joey"]
    ours_budget = "ours-fast-fp32" if "ours-fast-fp32" in budget else next(n for n in budget if n != "joey")
    gflops = {name: flops[name] * fixed[name].tokens_per_s / 1e9 for name in flops}
    results["fixed_updates"] = {"updates": updates, **{name: vars(run) for name, run in fixed.items()}}
    results["budget"] = {"minutes": budget_s / 60, **{name: vars(run) for name, run in budget.items()}}
    results["decoding"] = {
        name: {
            f"beam{beam}": {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()} for beam, d in runs.items()
        }
        for name, runs in decoding.items()
    }
    results["flops_per_target_token"] = flops
    results["training_gflops"] = gflops
    ratios = {
        "train_tokens_per_s": fixed["ours-if-fp32"].tokens_per_s / joey.tokens_per_s,
        "train_tokens_per_s_fast": fixed["ours-fast-fp32"].tokens_per_s / joey.tokens_per_s,
        "train_tokens_per_s_bf16": fixed["ours-if-bf16"].tokens_per_s / joey.tokens_per_s,
        "train_tokens_per_s_fast_bf16": fixed["ours-fast-bf16"].tokens_per_s / joey.tokens_per_s,
        "peak_rss": fixed["ours-fast-fp32"].peak_rss_gib / joey.peak_rss_gib,
        "peak_rss_input_feeding": fixed["ours-if-fp32"].peak_rss_gib / joey.peak_rss_gib,
        "matmul_peak_share": gflops["ours-fast-fp32"] / peak,
        "matmul_peak_share_input_feeding": gflops["ours-if-fp32"] / peak,
    }
    if "joey" in budget:
        ratios["dev_bleu_delta"] = budget[ours_budget].extra["dev_bleu"] - budget["joey"].extra["dev_bleu"]
        ratios["greedy_sent_per_s"] = (
            decoding[ours_budget][1]["sentences_per_s"] / decoding["joey"][1]["sentences_per_s"]
        )
        ratios["beam5_sent_per_s"] = (
            decoding[ours_budget][5]["sentences_per_s"] / decoding["joey"][5]["sentences_per_s"]
        )
        if "ours-if-fp32" in budget:
            ratios["dev_bleu_delta_input_feeding"] = (
                budget["ours-if-fp32"].extra["dev_bleu"] - budget["joey"].extra["dev_bleu"]
            )
    results["ratios_compare"] = {"ours_budget_run": ours_budget}
    results["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown_table(results, fixed, budget, decoding, gflops, peak)
    output.with_suffix(".md").write_text(table)
    print(table)


def markdown_table(results, fixed, budget, decoding, gflops, peak) -> str:
    """One Markdown page: the machine, the per-run figures, the ratios."""
    machine = results["machine"]
    lines = [
        f"# seq2seq versus Joey NMT {JOEY_VERSION}, side by side ({results['mode']} run, {results['date']})",
        "",
        (
            f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
            f"Python {machine['python']}. Matmul peak measured in the same run: fp32 {peak:.0f} GFLOP/s, "
            f"bf16 {results['matmul_peak_gflops']['bf16']:.0f} GFLOP/s."
        ),
        f"Command: `{results['command']}` (commit {str(machine.get('commit'))[:10]})",
        "",
        f"## Training, {results['fixed_updates']['updates']} updates each",
        "",
        "| run | target tokens/s | vs Joey | peak RSS GiB | matmul GFLOP/s (share of peak) |",
        "|---|---:|---:|---:|---:|",
    ]
    joey = fixed["joey"]
    for name, run in fixed.items():
        share = f"{gflops[name]:.0f} ({gflops[name] / peak:.0%})" if name in gflops else ""
        lines.append(
            f"| {name} | {run.tokens_per_s:,.0f} | {run.tokens_per_s / joey.tokens_per_s:.2f}x | "
            f"{run.peak_rss_gib:.2f} | {share} |"
        )
    lines += [
        "",
        f"## Equal wall-clock budget: {results['budget']['minutes']:g} minutes of training each",
        "",
        (
            "| run | updates | dev BLEU | test BLEU greedy | greedy sent/s | test BLEU beam 5 | beam-5 sent/s "
            "| words per output (greedy / beam 5) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in budget.items():
        greedy, beam = decoding[name][1], decoding[name][5]
        lines.append(
            f"| {name} | {run.updates} | {run.extra['dev_bleu']:.2f} | {greedy['bleu']:.2f} | "
            f"{greedy['sentences_per_s']:.1f} | {beam['bleu']:.2f} | {beam['sentences_per_s']:.1f} | "
            f"{greedy['mean_output_words']:.1f} / {beam['mean_output_words']:.1f} |"
        )
    if "ours-fast-fp32" in decoding:
        runs = decoding["ours-fast-fp32"]
        lines += [
            "",
            (
                "Decoding the same ours-fast-fp32 weights under bf16 autocast (`--precision bf16`): "
                f"greedy {runs['1-bf16']['sentences_per_s']:.1f} sentences/s (BLEU {runs['1-bf16']['bleu']:.2f}), "
                f"beam 5 {runs['5-bf16']['sentences_per_s']:.1f} sentences/s (BLEU {runs['5-bf16']['bleu']:.2f})."
            ),
        ]
    lines += ["", "## Ratios (`ratios` in benchmark.json)", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {key} | {value} |" for key, value in results["ratios"].items()]
    flops = results["flops_per_target_token"]
    lines += [
        "",
        "FLOPs per target token (matmuls only, forward + backward, counted with "
        "torch.utils.flop_counter on 4 real training batches): "
        + ", ".join(f"{name} {value / 1e6:.1f} M" for name, value in flops.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
