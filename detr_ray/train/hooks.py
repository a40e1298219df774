"""Fault injection and step records for tests and benchmarks: one object, absent in a user's run.

The fault tests and benchmarks install a :class:`FaultHooks` on a run, never
through its config: ``run_training(config, hooks=FaultHooks(...))`` in
process, or the environment variable :data:`HOOKS_ENV` (JSON of the fields)
for a ``detr-ray train`` started as a subprocess. The driver hands the hooks
to its workers beside the config (the loop config's ``hooks``), so they are
not a config section, not MLflow params and not in any checkpoint. Without
hooks the engine calls nothing: a user's run pays for none of this.

Pure: no Ray, no MLflow. ``record_images`` is a local folder (the test's own).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from detr_ray import storage
from detr_ray.errors import ConfigError, DataError
from detr_ray.storage import StorageOptions

HOOKS_ENV = "DETR_RAY_FAULT_HOOKS"


@dataclass(frozen=True)
class FaultHooks:
    """What to break or record. Steps are 1-based, as logged.

    Attributes:
        fail_once_at_step: rank 0 raises a ``RuntimeError`` before this step,
            once per run folder (a marker file there remembers it), so Ray's
            restart is tested.
        nan_at_steps: rank 0's outputs at these steps are NaN (a diverging step).
        record_images: a local folder; every worker appends, per step, the
            image ids it trained on (with epoch, step, world size, its pid) to
            ``rank<r>-pid<pid>.jsonl`` there.
        step_delay_s: sleep before every step (a tiny run slowed down, so that
            a test can act in the middle of an epoch).
        fail_scoring: a :class:`DataError` while scoring the first evaluation.
    """

    fail_once_at_step: int | None = None
    nan_at_steps: tuple[int, ...] = ()
    record_images: str | None = None
    step_delay_s: float = 0.0
    fail_scoring: bool = False

    def __post_init__(self):
        if self.step_delay_s < 0:
            raise ConfigError(f"{HOOKS_ENV}: step_delay_s must be >= 0, got {self.step_delay_s}")

    @classmethod
    def from_dict(cls, raw: dict | None) -> FaultHooks | None:
        if not raw:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"{HOOKS_ENV}: unknown hook {unknown[0]!r}; hooks are {sorted(known)}"
            )
        values = dict(raw)
        values["nan_at_steps"] = tuple(values.get("nan_at_steps", ()))
        return cls(**values)

    @classmethod
    def from_env(cls) -> FaultHooks | None:
        """The hooks :data:`HOOKS_ENV` describes, if it is set."""
        text = os.environ.get(HOOKS_ENV)
        if not text:
            return None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{HOOKS_ENV} is not JSON: {e}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_worker(self, run_dir: str, options: StorageOptions, rank: int) -> WorkerHooks:
        return WorkerHooks(self, run_dir, options, rank)


class WorkerHooks:
    """The hooks as one training worker applies them (see :class:`FaultHooks`)."""

    def __init__(self, hooks: FaultHooks, run_dir: str, options: StorageOptions, rank: int):
        self.hooks, self.run_dir, self.options, self.rank = hooks, run_dir, options, rank
        self.records: Path | None = None
        self.attempt = ""
        if hooks.record_images:
            Path(hooks.record_images).mkdir(parents=True, exist_ok=True)
            self.records = Path(hooks.record_images) / f"rank{rank}-pid{os.getpid()}.jsonl"

    def start_attempt(self, attempt: str) -> None:
        """``attempt`` tells restarts apart in the records: the step the worker
        group started from and rank 0's pid."""
        self.attempt = attempt

    def before_step(self, step_number: int) -> None:
        if self.hooks.step_delay_s:
            time.sleep(self.hooks.step_delay_s)
        target = self.hooks.fail_once_at_step
        if target is None or step_number != target or self.rank != 0:
            return
        marker = storage.join(self.run_dir, f".injected_failure_{target}")
        if storage.kind(marker, self.options) == "file":
            return
        storage.write_bytes(marker, b"", self.options)
        raise RuntimeError(f"injected failure at step {step_number} (fail_once_at_step)")

    def outputs(self, step_number: int, cls_scores: Tensor) -> Tensor:
        """``cls_scores``, NaN at the poisoned steps on rank 0."""
        if step_number in self.hooks.nan_at_steps and self.rank == 0:
            return cls_scores * float("nan")
        return cls_scores

    def after_step(
        self, image_ids: list[int], epoch: int, step_number: int, world_size: int
    ) -> None:
        if self.records is None:
            return
        line = {
            "attempt": self.attempt,
            "epoch": epoch,
            "step": step_number,
            "world": world_size,
            "rank": self.rank,
            "pid": os.getpid(),
            "time": time.time(),
            "images": image_ids,
        }
        with self.records.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def before_scoring(self) -> None:
        if self.hooks.fail_scoring:
            raise DataError("injected data error while scoring (fail_scoring)")
