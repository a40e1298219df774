"""What a training run's workers hand back to its driver, and what the driver returns.

Rank 0's :class:`RunOutcome` is the return value of Ray Train's loop (every
other rank returns one too, which Ray ignores); the launcher completes it
with where the run's checkpoints are and returns it from
:func:`detr_ray.train.launcher.run_training`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["completed", "stopped", "error"]


@dataclass
class RunOutcome:
    """How a run ended.

    ``status``: ``completed``; ``stopped`` (the run stopped itself, e.g. it
    diverged: ``message`` says why); ``error`` (a user-facing error: its class
    name in ``error_kind`` and its ``message``). The rest is rank 0's view;
    ``latest_checkpoint`` and ``run_dir`` are the driver's.
    """

    status: Status
    message: str = ""
    error_kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation's
    epoch: int = 0
    global_step: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    started_at_step: int = 0  # where this attempt of the run began
    unreadable_checkpoints: list[str] = field(default_factory=list)  # passed over on resume
    worker_nodes: list[str] = field(default_factory=list)  # the node id of each rank
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    best_checkpoint: str | None = None
    latest_checkpoint: str | None = None
    run_dir: str | None = None
