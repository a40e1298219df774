"""Where training stands, in units that survive a change of world size (in every checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Where training stands. Positions are counted in images as well as in
    steps: an elastic run restarted at another world size goes on from the
    images (:mod:`detr_ray.data.epoch_plan`); steps are for logging."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0  # optimiser steps (and skipped steps) so far
    epoch_images_seen: int = 0  # images of the current epoch's order trained on
    images_seen: int = 0  # images trained on so far (all epochs, all workers)
    nan_streak: int = 0  # consecutive skipped steps
    skipped_steps: list[int] = field(default_factory=list)
    train_seconds: float = 0.0  # training time spent (train.time_budget_minutes)

    @classmethod
    def from_checkpoint(cls, saved: dict, full_batch: int) -> TrainState:
        """A checkpoint's ``train_state``. Checkpoints written before positions
        were kept in images are read as if written with ``full_batch`` images a
        step (this world size times the per-worker batch)."""
        saved = dict(saved)
        saved.setdefault("epoch_images_seen", saved.get("step_in_epoch", 0) * full_batch)
        saved.setdefault("images_seen", saved.get("global_step", 0) * full_batch)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in saved.items() if k in known})
