"""Learning-rate schedules (seq2seq/schedule.py): exact rates at chosen steps for each type, the plateau
decay, and every schedule's state surviving a checkpoint round trip as on resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.config import ScheduleConfig
from seq2seq.schedule import LearningRateSchedule


def schedule(kind: str, base_lr: float = 1.0, max_steps: int | None = 110, **options) -> LearningRateSchedule:
    """A schedule of `kind` (warm-up 0, min_lr 0 unless given) with base learning rate `base_lr`."""
    options = {"warmup_steps": 0, "min_lr": 0.0, **options}
    return LearningRateSchedule(ScheduleConfig(type=kind, **options), base_lr, max_steps)


# --- warm-up ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["constant", "inverse_sqrt", "linear", "plateau"])
def test_warmup_rises_linearly_from_zero(kind: str):
    lr = schedule(kind, base_lr=2.0, warmup_steps=4, min_lr=0.5).lr
    # base * step / warmup; the min_lr floor does not apply during warm-up (it starts from 0)
    assert [lr(step) for step in range(4)] == [0.0, 0.5, 1.0, 1.5]
    assert lr(4) == pytest.approx(2.0)  # warm-up ends at the base rate, whatever comes after


# --- inverse square root -----------------------------------------------------------------------------


def test_inverse_sqrt_decays_with_the_square_root_of_the_step_after_warmup():
    lr = schedule("inverse_sqrt", base_lr=1e-3, warmup_steps=4).lr
    # base * sqrt(warmup / step)
    assert lr(3) == pytest.approx(0.75e-3)  # still warming up
    assert lr(4) == pytest.approx(1e-3)  # sqrt(4 / 4) = 1
    assert lr(16) == pytest.approx(0.5e-3)  # sqrt(4 / 16) = 1/2
    assert lr(64) == pytest.approx(0.25e-3)  # sqrt(4 / 64) = 1/4
    assert lr(100) == pytest.approx(0.2e-3)  # sqrt(4 / 100) = 1/5


def test_inverse_sqrt_without_warmup_starts_at_the_base_rate():
    lr = schedule("inverse_sqrt", base_lr=1e-3).lr
    assert lr(1) == pytest.approx(1e-3)  # sqrt(1 / 1)
    assert lr(4) == pytest.approx(0.5e-3)  # sqrt(1 / 4)
    assert lr(400) == pytest.approx(0.05e-3)  # sqrt(1 / 400)


def test_inverse_sqrt_stops_at_min_lr():
    lr = schedule("inverse_sqrt", base_lr=1e-3, min_lr=1e-4).lr
    assert lr(64) == pytest.approx(1e-3 / 8)  # above the floor
    assert lr(10_000) == 1e-4  # 1e-3 / 100 = 1e-5 would be below it


# --- linear decay ------------------------------------------------------------------------------------


def test_linear_decays_to_zero_at_max_steps():
    lr = schedule("linear", base_lr=1.0, max_steps=110, warmup_steps=10).lr
    # base * (max_steps - step) / (max_steps - warmup) = (110 - step) / 100 after warm-up
    assert lr(5) == pytest.approx(0.5)  # warm-up: 5 / 10
    assert lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.5)
    assert lr(100) == pytest.approx(0.1)
    assert lr(109) == pytest.approx(0.01)
    assert lr(110) == 0.0
    assert lr(120) == 0.0  # never negative past the end


def test_linear_ends_at_min_lr():
    lr = schedule("linear", base_lr=1.0, max_steps=100, min_lr=0.05).lr
    assert lr(50) == pytest.approx(0.5)  # (100 - 50) / 100
    assert lr(96) == pytest.approx(0.05)  # 0.04 is below the floor
    assert lr(100) == 0.05


# --- constant ----------------------------------------------------------------------------------------


def test_constant_keeps_the_base_rate_after_warmup():
    sched = schedule("constant", base_lr=3e-4, warmup_steps=2)
    assert sched.lr(1) == pytest.approx(1.5e-4)
    assert [sched.lr(step) for step in (2, 3, 100, 10**6)] == [3e-4] * 4
    for score in (10.0, 5.0, 5.0, 5.0, 5.0):  # dev scores do not move it
        assert sched.on_validation(score) is False
    assert sched.lr(10**6) == 3e-4


# --- plateau -----------------------------------------------------------------------------------------


def test_plateau_decays_after_patience_bad_validations_and_not_before():
    sched = schedule("plateau", base_lr=1.0, patience=2, decay_factor=0.5)
    assert sched.on_validation(10.0) is False  # the first score is an improvement
    assert sched.on_validation(9.0) is False  # 1 bad validation: within patience
    assert sched.on_validation(10.0) is False  # 2: equal is not better, still within patience
    assert sched.lr(50) == 1.0
    assert sched.on_validation(9.5) is True  # 3 bad validations > patience 2: decay
    assert sched.lr(50) == 0.5
    # The count starts again after a decay: patience more bad validations before the next one.
    assert [sched.on_validation(9.0) for _ in range(3)] == [False, False, True]
    assert sched.lr(50) == 0.25


def test_plateau_improvement_resets_the_count():
    sched = schedule("plateau", base_lr=1.0, patience=2, decay_factor=0.5)
    scores = [10.0, 9.0, 9.0, 11.0, 9.0, 9.0]  # two bad, a new best, two bad: never three in a row
    assert [sched.on_validation(s) for s in scores] == [False] * 6
    assert sched.lr(50) == 1.0
    assert sched.on_validation(9.0) is True  # the third bad one after the best 11


def test_plateau_stops_at_min_lr():
    sched = schedule("plateau", base_lr=1.0, patience=0, decay_factor=0.1, min_lr=0.005)
    sched.on_validation(1.0)
    rates = []
    for _ in range(3):
        assert sched.on_validation(0.0) is True  # patience 0: every bad validation decays
        rates.append(sched.lr(50))
    assert rates == pytest.approx([0.1, 0.01, 0.005])  # 0.001 is below the floor
    assert sched.plateau_scale == pytest.approx(0.001)  # the scale goes on; the rate is floored


# --- resume ------------------------------------------------------------------------------------------

STEPS = 40
VALIDATE_EVERY = 4
# Dev scores at steps 4, 8, ..., 40: improvements, plateaus that trigger decays, and equal scores.
SCORES = [1.0, 2.0, 2.0, 1.5, 1.0, 3.0, 3.0, 2.0, 2.5, 2.9]


def trace(sched: LearningRateSchedule, start: int, stop: int) -> list[tuple[float, bool | None]]:
    """The learning rate of steps start..stop-1, and the validation outcome at each validation step."""
    out = []
    for step in range(start, stop):
        decayed = sched.on_validation(SCORES[step // VALIDATE_EVERY - 1]) if step % VALIDATE_EVERY == 0 else None
        out.append((sched.lr(step), decayed))
    return out


def through_a_checkpoint(state: dict, path: Path) -> dict:
    """`state` after save_checkpoint and load_checkpoint (weights-only loading), as on resume."""
    save_checkpoint({"schedule": state}, path)
    return load_checkpoint(path)["schedule"]


KINDS = {
    "constant": {"warmup_steps": 3},
    "inverse_sqrt": {"warmup_steps": 6, "min_lr": 1e-5},
    "linear": {"warmup_steps": 6, "min_lr": 1e-3},
    "plateau": {"warmup_steps": 3, "patience": 1, "decay_factor": 0.5, "min_lr": 0.2},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("stop_at", [2, 11, 21, 29], ids=lambda s: f"stop-at-{s}")
def test_state_survives_a_checkpoint_round_trip(tmp_path: Path, kind: str, stop_at: int):
    """Stopping at `stop_at` and resuming from the checkpointed state gives the uninterrupted rates and decays."""
    whole = trace(schedule(kind, max_steps=STEPS, **KINDS[kind]), 1, STEPS + 1)
    first = schedule(kind, max_steps=STEPS, **KINDS[kind])
    before = trace(first, 1, stop_at)
    resumed = schedule(kind, max_steps=STEPS, **KINDS[kind])
    resumed.load_state_dict(through_a_checkpoint(first.state_dict(), tmp_path / "last.pt"))
    assert before + trace(resumed, stop_at, STEPS + 1) == whole


def test_plateau_state_matters_on_resume(tmp_path: Path):
    """The round trip above is not vacuous: a plateau schedule restarted without its state diverges."""
    options = KINDS["plateau"]
    whole = trace(schedule("plateau", max_steps=STEPS, **options), 1, STEPS + 1)
    assert sum(decayed is True for _, decayed in whole) >= 2  # the scores make it decay more than once
    first = schedule("plateau", max_steps=STEPS, **options)
    before = trace(first, 1, 29)
    state = through_a_checkpoint(first.state_dict(), tmp_path / "last.pt")
    assert state["plateau_scale"] < 1 and state["bad_validations"] > 0 and state["best_score"] == 3.0
    fresh = schedule("plateau", max_steps=STEPS, **options)
    assert before + trace(fresh, 29, STEPS + 1) != whole


def test_state_before_any_validation_round_trips(tmp_path: Path):
    """No dev score yet: the best score is -inf, which a weights-only checkpoint must still carry."""
    state = through_a_checkpoint(schedule("plateau").state_dict(), tmp_path / "last.pt")
    assert state == {"plateau_scale": 1.0, "best_score": -math.inf, "bad_validations": 0}
    resumed = schedule("plateau", patience=0)
    resumed.load_state_dict(state)
    assert resumed.on_validation(-1e9) is False  # any first score is an improvement on -inf
