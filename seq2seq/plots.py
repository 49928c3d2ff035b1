"""Plots people would rather look at than read: training curves, attention heatmaps, BLEU by source length."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from seq2seq.writing import atomic_file, write_error


def plot_training_curves(progress: list[dict], metrics: list[dict], path: Path, title: str) -> Path:
    """Write `path` (PNG): losses and dev BLEU against updates and against minutes.

    `progress` holds training records (step, minutes, train_loss), `metrics` validation records
    (step, minutes, dev_loss, dev_bleu); the run directory's JSON-lines files give both.
    """
    metrics = [m for m in metrics if "dev_loss" in m]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for column, x_key, x_label in ((0, "step", "updates"), (1, "minutes", "minutes of training")):
        loss_axis, bleu_axis = axes[0, column], axes[1, column]
        if progress:
            loss_axis.plot(
                [p[x_key] for p in progress], [p["train_loss"] for p in progress], label="train loss (label-smoothed)"
            )
        if metrics:
            loss_axis.plot([m[x_key] for m in metrics], [m["dev_loss"] for m in metrics], "o-", label="dev loss")
            bleu_axis.plot([m[x_key] for m in metrics], [m["dev_bleu"] for m in metrics], "o-", color="tab:green")
        loss_axis.set_ylabel("cross-entropy per token")
        loss_axis.legend(loc="upper right")
        loss_axis.grid(alpha=0.3)
        bleu_axis.set_ylabel("dev BLEU (greedy)")
        bleu_axis.set_xlabel(x_label)
        bleu_axis.grid(alpha=0.3)
    figure.suptitle(f"Training curves: {title}")
    figure.tight_layout()
    path = Path(path)
    try:
        with atomic_file(path) as handle:
            figure.savefig(handle, format="png", dpi=90)
    except OSError as exc:
        raise write_error(path, exc, "the previous curves are kept") from None
    finally:
        plt.close(figure)
    return path


def plot_attention(src_pieces: list[str], out_pieces: list[str], weights, path: Path, title: str = "") -> Path:
    """Save an attention heatmap: output pieces (rows) against source pieces (columns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = attention_figure(src_pieces, out_pieces, weights, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def attention_figure(src_pieces: list[str], out_pieces: list[str], weights, title: str = "") -> Figure:
    """An attention heatmap figure: output pieces (rows) against source pieces (columns), weights [out, src].

    An empty output (an early model's, say) is drawn as one empty row, so that the figure still shows the source.
    """
    if len(out_pieces) == 0:
        out_pieces, weights = ["(empty output)"], torch.zeros(1, len(src_pieces))
    width = max(4.0, 0.32 * len(src_pieces) + 2)
    height = max(3.0, 0.3 * len(out_pieces) + 1.5)
    figure, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(weights.float().numpy(), cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=8)
    axis.set_yticks(range(len(out_pieces)), out_pieces, fontsize=8)
    axis.set_xlabel("source pieces")
    axis.set_ylabel("output pieces")
    if title:
        axis.set_title(title if len(title) < 80 else title[:77] + "...", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.03)
    figure.tight_layout()
    return figure


def plot_bleu_by_length(scores: dict[str, dict[str, float | None]], path: Path) -> Path:
    """Line plot of BLEU per source-length bucket, one line per variant."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for variant, by_bucket in scores.items():
        labels = list(by_bucket)
        values = [float("nan") if v is None else v for v in by_bucket.values()]
        axis.plot(range(len(labels)), values, "o-", label=variant)
        axis.set_xticks(range(len(labels)), labels)
    axis.set_xlabel("source length (words)")
    axis.set_ylabel("test BLEU")
    axis.set_title("BLEU by source length")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
