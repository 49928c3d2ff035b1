"""TensorBoard logging (train.tensorboard): scalars of training and validation, attention heatmaps as images.

Event files go to <run_dir>/tensorboard; view them with `tensorboard --logdir runs`. The package is an
optional extra: `pip install -e '.[tensorboard]'`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from seq2seq.errors import UserError
from seq2seq.plots import attention_figure

log = logging.getLogger(__name__)

# Record keys and the TensorBoard tags they are shown under.
PROGRESS_TAGS = {
    "train_loss": "train/loss",
    "lr": "train/learning_rate",
    "tokens_per_s": "train/tokens_per_second",
    "grad_norm": "train/gradient_norm",
}
VALIDATION_TAGS = {"dev_loss": "dev/loss", "dev_ppl": "dev/perplexity", "dev_bleu": "dev/bleu"}


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or one clear line saying how to install TensorBoard."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs the package)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "train.tensorboard: true needs the tensorboard package: pip install -e '.[tensorboard]' "
            "(or set train.tensorboard: false)"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Writes a run's records as TensorBoard scalars and its attention examples as images."""

    def __init__(self, directory: Path, resumed_at_step: int):
        writer_class = summary_writer_class()
        # purge_step: TensorBoard hides events an earlier, interrupted process wrote after the resumed checkpoint.
        self.writer = writer_class(str(directory), purge_step=resumed_at_step + 1 if resumed_at_step else None)
        log.info("TensorBoard event files: %s (tensorboard --logdir %s)", directory, directory.parent)

    def progress(self, record: dict[str, Any]) -> None:
        """Training loss, learning rate, speed and gradient norm of one progress record."""
        self._scalars(record, PROGRESS_TAGS)

    def validation(self, record: dict[str, Any], examples: list[tuple[list[str], list[str], Tensor]]) -> None:
        """Dev loss, perplexity and BLEU, and one attention heatmap per example sentence."""
        self._scalars(record, VALIDATION_TAGS)
        for number, (src_pieces, out_pieces, weights) in enumerate(examples, start=1):
            figure = attention_figure(src_pieces, out_pieces, weights, f"dev example {number}, step {record['step']}")
            self.writer.add_figure(f"attention/example_{number}", figure, record["step"], close=True)
        self.writer.flush()

    def _scalars(self, record: dict[str, Any], tags: dict[str, str]) -> None:
        for key, tag in tags.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], record["step"])

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
