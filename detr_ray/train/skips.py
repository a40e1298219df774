"""Skipped steps: counted, and the run stopped when too many come in a row.

A step is skipped on every worker together when any worker meets non-finite
outputs, losses or gradients, or an empty batch. A non-finite gradient is
found on the device (the fused AdamW's ``found_inf`` skips the update
without a host read), so its flag is *deferred* and read at the next logged
step or report (:meth:`SkippedSteps.settle`, one copy for all of them); the
count of skips in a row can therefore come up to ``train.log_every`` steps
late. Past ``train.max_nan_steps`` in a row the run stops with
:class:`~detr_ray.errors.TrainingStopped`.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from detr_ray.errors import TrainingStopped
from detr_ray.train.state import TrainState

log = logging.getLogger(__name__)

NON_FINITE = "a non-finite loss or gradient"


class SkippedSteps:
    """The skip count of one worker (every worker counts the same steps)."""

    def __init__(self, max_nan_steps: int, rank: int):
        self.max_nan_steps, self.rank = max_nan_steps, rank
        self.deferred: list[tuple[int, Tensor]] = []  # (step, 0-dim 1.0 if its update was skipped)

    def defer(self, step_number: int, skipped_flag: Tensor) -> None:
        """Remember step ``step_number``'s on-device flag, to be read by :meth:`settle`."""
        self.deferred.append((step_number, skipped_flag))

    def clear(self) -> None:
        self.deferred = []

    def settle(self, state: TrainState) -> None:
        """Read the deferred flags (one copy) and count the skipped steps into ``state``."""
        if not self.deferred:
            return
        steps, flags = zip(*self.deferred)
        self.deferred = []
        for step_number, bad in zip(steps, torch.stack(flags).tolist()):
            if bad:
                self.count(state, step_number, NON_FINITE)
            else:
                state.nan_streak = 0

    def count(self, state: TrainState, step_number: int, why: str) -> None:
        """Count step ``step_number`` as skipped for ``why``; stop past the limit."""
        state.nan_streak += 1
        state.skipped_steps.append(step_number)
        if self.rank == 0:
            log.warning(
                "step %d: %s; step skipped (%d in a row, limit train.max_nan_steps=%d)",
                step_number,
                why,
                state.nan_streak,
                self.max_nan_steps,
            )
        if state.nan_streak > self.max_nan_steps:
            raise TrainingStopped(
                f"stopped at step {step_number} (epoch {state.epoch + 1}): {why} for "
                f"{state.nan_streak} steps in a row (train.max_nan_steps="
                f"{self.max_nan_steps}). The model diverged; lower optim.lr, "
                "check the data, or resume from the last checkpoint."
            )
