"""The rule of asynchronous successive halving (ASHA), and its records.

One bracket of rungs at ``grace_period * reduction_factor**k`` epochs (up to
``max_t``). A trial that reaches a rung first is recorded there, and stopped
if its reward is below the rung's cutoff: the ``(1 - 1/reduction_factor)``
quantile (linear interpolation) of the rewards recorded there before it. A
reward is the metric, negated when lower is better. This is the rule of Ray
Tune's ``ASHAScheduler`` with one bracket (Li et al., "A System for Massively
Parallel Hyperparameter Tuning", 2020). :class:`Rungs` holds its records as
JSON, kept in the sweep's folder (:data:`RUNGS_FILE`, :func:`read_rungs`), so
that a resumed sweep judges its trials against the ones it already ran.
"""

from __future__ import annotations

import json
import math

import numpy as np

from detr_ray import storage
from detr_ray.errors import ConfigError
from detr_ray.storage import StorageOptions

RUNGS_FILE = "asha_rungs.json"  # in the sweep's folder


def milestones(grace_period: float, max_t: float, reduction_factor: float) -> list[float]:
    """The rungs' epochs, lowest first: ``grace_period * rf**k`` for ``k`` from 0
    while it stays within ``max_t`` (Ray's count: ``int(log(max_t/grace)/log(rf)) + 1``)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(max(count, 0))]


class Rungs:
    """Rewards recorded at each rung: ``{milestone: {trial_id: reward}}``."""

    def __init__(self, marks: list[float], reduction_factor: float, recorded: dict | None = None):
        self.reduction_factor = reduction_factor
        self.recorded: dict[float, dict[str, float]] = {float(m): {} for m in marks}
        for mark, rewards in (recorded or {}).items():
            self.recorded.setdefault(float(mark), {}).update(
                {trial: float(reward) for trial, reward in rewards.items()}
            )

    def cutoff(self, mark: float) -> float | None:
        """The reward a trial must reach at rung ``mark`` (None: nothing recorded there)."""
        rewards = list(self.recorded[mark].values())
        if not rewards:
            return None
        return float(np.nanpercentile(rewards, (1 - 1 / self.reduction_factor) * 100))

    def judge(self, trial_id: str, epoch: float, reward: float) -> bool | None:
        """Record ``trial_id``'s ``reward`` at ``epoch`` at the highest rung it has
        reached and not been recorded at; returns whether it must stop (below
        that rung's cutoff). None: no such rung (between rungs, or at one it
        was already judged at), nothing recorded, it goes on."""
        for mark in sorted(self.recorded, reverse=True):
            if epoch < mark or trial_id in self.recorded[mark]:
                continue
            cutoff = self.cutoff(mark)
            self.recorded[mark][trial_id] = reward
            return cutoff is not None and reward < cutoff
        return None

    def to_json(self) -> str:
        return json.dumps({str(m): r for m, r in sorted(self.recorded.items())}, indent=1)

    @classmethod
    def from_json(cls, text: str, marks: list[float], reduction_factor: float) -> Rungs:
        return cls(marks, reduction_factor, json.loads(text))


def read_rungs(
    path: str, options: StorageOptions, marks: list[float], reduction_factor: float
) -> Rungs | None:
    """The rungs kept at ``path`` (None: no file yet); a damaged file is a
    :class:`ConfigError` naming it and what to do."""
    if storage.kind(path, options) != "file":
        return None
    text = storage.read_bytes(path, options).decode(errors="replace")
    try:
        return Rungs.from_json(text, marks, reduction_factor)
    except (ValueError, AttributeError, TypeError) as e:
        raise ConfigError(
            f"{storage.without_query(path)}: ASHA's records of this sweep cannot be read "
            f"({e}); delete the file to resume without them (the trials finished before "
            "are then not compared with the ones to run)"
        ) from None


def check_rungs(sweep_dir: str, options: StorageOptions) -> None:
    """Refuse a damaged rungs file in ``sweep_dir`` now, before Tune starts (a
    resumed sweep's ASHA reads it at its first decision); only its form is
    checked, so any rung layout will do."""
    read_rungs(storage.join(sweep_dir, RUNGS_FILE), options, marks=[], reduction_factor=2.0)
