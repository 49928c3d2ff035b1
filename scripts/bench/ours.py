"""seq2seq itself in the side-by-side benchmark: configs written from the quickstart config, training, decoding, FLOPs.

Every run is the command line a user would type (`python -m seq2seq train|evaluate`), one at a time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml
from processes import ROOT, Run, median_after_first, run_process

BASE_CONFIG = ROOT / "configs" / "quickstart.yaml"


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


def seq2seq_command(cudnn: bool = True) -> list[str]:
    """`python -m seq2seq`, or the same through without_cudnn.py (cuDNN off: PyTorch's own CUDA GRU kernels)."""
    if cudnn:
        return [sys.executable, "-m", "seq2seq"]
    return [sys.executable, str(ROOT / "scripts" / "bench" / "without_cudnn.py")]


def train_ours(
    work: Path, name: str, overrides: dict, budget_s: float | None = None, log_every: int = 25, cudnn: bool = True
) -> Run:
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
    run = run_process([*seq2seq_command(cudnn), "train", str(config), "--force"], work / f"{name}.log")
    run.name = name
    run_dir = work / "runs" / name
    records = (run_dir / "progress.jsonl").read_text().splitlines()
    speeds = [json.loads(line)["tokens_per_s"] for line in records]
    run.tokens_per_s = median_after_first(speeds)  # the first interval includes warm-up
    run.updates = json.loads((run_dir / "summary.json").read_text()).get("steps")
    run.extra["checkpoint"] = str(run_dir / "last.pt")
    return run


def decode_ours(
    work: Path, checkpoint: str, src: Path, ref: Path, beam: int, tag: str, options: tuple[str, ...] = ()
) -> dict:
    """Our decoding of src (`seq2seq evaluate` with extra `options`, e.g. --precision bf16, --quantize int8,
    --device cuda): hypotheses file, seconds and sentences/s as evaluate times them (model loading excluded)."""
    output = work / "hyps" / f"{tag}.txt"
    output.parent.mkdir(exist_ok=True)
    command = [*seq2seq_command(), "evaluate", checkpoint, "--src", str(src), "--ref", str(ref)]
    command += ["--beam", str(beam), "--alpha", "1.0", *options]
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
