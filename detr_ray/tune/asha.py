"""ASHA for Ray Tune whose rungs survive ``detr-ray tune --resume``.

Ray Tune does not save a sweep's scheduler: ``Tuner.restore`` rebuilds it
from the copy it pickled when the sweep began (ray-project/ray#30838), so Ray's
own ASHA forgets every result its rungs recorded, and a trial run after a
resume is judged only against the other trials run after it. This scheduler
applies the same rule (:mod:`detr_ray.tune.rungs`) and writes its rungs to
``asha_rungs.json`` in the sweep's folder at every recorded result; a resumed
sweep reads them back before its first decision.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from detr_ray import storage
from detr_ray.storage import StorageOptions
from detr_ray.tune.rungs import RUNGS_FILE, Rungs, milestones, read_rungs


class ResumableASHA(FIFOScheduler):
    """ASHA (one bracket, budget ``time_attr``) with its rungs kept in
    ``sweep_dir/asha_rungs.json`` (a local folder or a bucket)."""

    def __init__(
        self,
        sweep_dir: str,
        options: StorageOptions,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        time_attr: str = "epoch",
    ):
        super().__init__()
        self._path = storage.join(sweep_dir, RUNGS_FILE)
        self._options = options
        self._time_attr, self._max_t, self._rf = time_attr, max_t, reduction_factor
        self._marks = milestones(grace_period, max_t, reduction_factor)
        self._metric: str | None = None  # set by Tune (set_search_properties)
        self._mode: str | None = None
        self._rungs: Rungs | None = None  # read on first use: after a restore too

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Tune's ``metric`` and ``mode`` (a restored sweep passes the same again)."""
        if (self._metric and metric and metric != self._metric) or (
            self._mode and mode and mode != self._mode
        ):
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        if result[self._time_attr] >= self._max_t:
            return TrialScheduler.STOP  # its last epoch: done, whatever the rungs say
        stop = self._judge(trial.trial_id, result)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if self._time_attr in result and self._metric in result:
            self._judge(trial.trial_id, result)  # its final result counts at its rung

    def debug_string(self) -> str:
        rungs = self._loaded()
        shown = ", ".join(f"epoch {m:g}: {len(rungs.recorded[m])}" for m in sorted(rungs.recorded))
        return f"ASHA (rungs kept across --resume; trials recorded at {shown})"

    def _judge(self, trial_id: str, result: dict) -> bool:
        rungs = self._loaded()
        value = float(result[self._metric])
        reward = value if self._mode == "max" else -value
        stop = rungs.judge(trial_id, float(result[self._time_attr]), reward)
        if stop is None:  # no rung reached: nothing recorded
            return False
        storage.write_bytes(self._path, rungs.to_json().encode(), self._options)
        return stop

    def _loaded(self) -> Rungs:
        if self._rungs is None:
            kept = read_rungs(self._path, self._options, self._marks, self._rf)
            self._rungs = kept or Rungs(self._marks, self._rf)
        return self._rungs
