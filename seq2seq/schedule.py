"""Learning-rate schedules: linear warm-up, then constant, inverse square root, linear decay or plateau."""

from __future__ import annotations

import math

from seq2seq.config import ScheduleConfig


class LearningRateSchedule:
    """The learning rate for each step; `plateau` also reacts to dev scores."""

    def __init__(self, config: ScheduleConfig, base_lr: float, max_steps: int | None):
        self.config, self.base_lr, self.max_steps = config, base_lr, max_steps
        self.plateau_scale = 1.0
        self.best_score = -math.inf
        self.bad_validations = 0

    def lr(self, step: int) -> float:
        """Learning rate for update number `step` (1-based)."""
        warmup = self.config.warmup_steps
        if warmup and step < warmup:
            return self.base_lr * step / warmup
        kind = self.config.type
        if kind == "inverse_sqrt":
            scale = math.sqrt(max(warmup, 1) / step)
        elif kind == "linear" and self.max_steps:
            scale = max(0.0, (self.max_steps - step) / max(1, self.max_steps - warmup))
        elif kind == "plateau":
            scale = self.plateau_scale
        else:
            scale = 1.0
        return max(self.base_lr * scale, self.config.min_lr)

    def on_validation(self, score: float) -> bool:
        """Record a dev score (higher is better); returns True when the plateau schedule decayed."""
        if score > self.best_score:
            self.best_score, self.bad_validations = score, 0
            return False
        self.bad_validations += 1
        if self.config.type == "plateau" and self.bad_validations > self.config.patience:
            self.plateau_scale *= self.config.decay_factor
            self.bad_validations = 0
            return True
        return False

    def state_dict(self) -> dict:
        """Plain values for a checkpoint."""
        return {
            "plateau_scale": self.plateau_scale,
            "best_score": self.best_score,
            "bad_validations": self.bad_validations,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()` output."""
        self.plateau_scale = state["plateau_scale"]
        self.best_score = state["best_score"]
        self.bad_validations = state["bad_validations"]
