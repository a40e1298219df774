"""A run's training time against ``train.time_budget_minutes`` (Ultralytics' ``time``).

The clock runs while a worker trains, evaluations between epochs included,
and carries over restarts (the checkpoint records the seconds spent). Every
worker must stop at the same step, so the seconds are agreed on: each step
the workers' own clocks travel, maximum taken, in the all-reduce the step
already makes for its "skip" flag, and are read with the matching costs (no
extra host read). With a budget, the learning-rate drops come at the share
of the budget that their epochs are of ``train.epochs``
(:func:`~detr_ray.train.schedule.lr_factor`), and training stops, mid-epoch
if need be, once the budget is spent; the run then evaluates and checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TimeBudget:
    """Seconds of training spent, against ``minutes`` (``None``: no budget).

    Args:
        minutes: ``train.time_budget_minutes``.
        spent_s: seconds spent by earlier attempts (from the checkpoint).
        clock: seconds, monotonic (a test's own clock).
    """

    def __init__(
        self,
        minutes: float | None,
        spent_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.budget_s = None if minutes is None else minutes * 60.0
        self.spent_s = spent_s  # agreed by every worker (see agree)
        self._clock = clock
        self._before = spent_s  # spent before this attempt's clock started
        self._started: float | None = None

    def start(self) -> None:
        """This attempt begins training (the worker calls it once)."""
        self._before, self._started = self.spent_s, self._clock()

    def local_elapsed(self) -> float:
        """Seconds spent by this worker's clock (earlier attempts included)."""
        if self._started is None:
            return self.spent_s
        return self._before + self._clock() - self._started

    def agree(self, seconds: float) -> None:
        """The seconds every worker agreed on (the maximum of their clocks)."""
        self.spent_s = max(self.spent_s, float(seconds))

    @property
    def fraction(self) -> float:
        """The share of the budget spent (0 without a budget)."""
        return 0.0 if self.budget_s is None else self.spent_s / self.budget_s

    @property
    def exhausted(self) -> bool:
        return self.budget_s is not None and self.spent_s >= self.budget_s

    def spent_message(self, epochs_done: float) -> str:
        """What a rank-0 worker prints when the budget stops training."""
        minutes = (self.budget_s or 0.0) / 60
        return (
            f"time budget spent ({self.spent_s / 60:.1f} of {minutes:g} min, "
            f"train.time_budget_minutes) after {epochs_done:.2f} epochs: evaluating and saving"
        )
