"""An exponential moving average of the weights (Polyak averaging), kept beside the trained model.

After each update, every averaged tensor moves towards the trained one:
    average = decay_t x average + (1 - decay_t) x weights,  decay_t = min(decay, (1 + step) / (10 + step))
The warm-up of decay_t (as in TensorFlow's ExponentialMovingAverage with num_updates) keeps the first
updates from being dominated by the random initial weights. Validation, best.pt and the final model
use the average; the optimizer keeps updating the trained weights.
"""

from __future__ import annotations

import copy

import torch

from seq2seq.model import Seq2Seq


class WeightAverage:
    """A copy of the model whose floating-point tensors follow the trained model's as a moving average."""

    def __init__(self, model: Seq2Seq, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used after update `step` (1-based): warms up towards `decay`."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: Seq2Seq, step: int) -> None:
        """Move the average towards `model`'s current weights after update `step`."""
        averaged, trained = self._tensors(self.model), self._tensors(model)
        torch._foreach_lerp_(averaged, trained, 1.0 - self.decay_at(step))

    @staticmethod
    def _tensors(model: Seq2Seq) -> list[torch.Tensor]:
        """Floating-point tensors of the state (parameters and buffers), each shared tensor once, in a fixed order."""
        seen: set[int] = set()
        tensors = []
        for tensor in model.state_dict(keep_vars=True).values():
            if tensor.is_floating_point() and id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor.data)
        return tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, as a model state dict (what checkpoints store as `model`)."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averaged weights saved by `state_dict`."""
        self.model.load_state_dict(state)
