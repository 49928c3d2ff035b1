"""Plots people would rather look at than read: training curves (and attention heatmaps)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file ([] when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training_curves(run_dir: Path) -> Path:
    """Write run_dir/curves.png: losses and dev BLEU against steps and against minutes."""
    progress = read_jsonl(run_dir / "progress.jsonl")
    metrics = [m for m in read_jsonl(run_dir / "metrics.jsonl") if "dev_loss" in m]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for column, x_key, x_label in ((0, "step", "updates"), (1, "minutes", "minutes of training")):
        loss_axis, bleu_axis = axes[0, column], axes[1, column]
        if progress:
            loss_axis.plot([p[x_key] for p in progress], [p["train_loss"] for p in progress], label="train loss (smoothed labels)")
        if metrics:
            loss_axis.plot([m[x_key] for m in metrics], [m["dev_loss"] for m in metrics], "o-", label="dev loss")
            bleu_axis.plot([m[x_key] for m in metrics], [m["dev_bleu"] for m in metrics], "o-", color="tab:green")
        loss_axis.set_ylabel("cross-entropy per token")
        loss_axis.legend(loc="upper right")
        loss_axis.grid(alpha=0.3)
        bleu_axis.set_ylabel("dev BLEU (greedy)")
        bleu_axis.set_xlabel(x_label)
        bleu_axis.grid(alpha=0.3)
    figure.suptitle(f"Training curves: {run_dir.name}")
    figure.tight_layout()
    path = run_dir / "curves.png"
    temporary = run_dir / ".curves.tmp.png"
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    temporary.replace(path)
    return path
