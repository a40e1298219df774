"""What a training step reports, and how the workers' numbers are combined.

:meth:`Engine.train_step <detr_ray.train.engine.Engine.train_step>` returns a
:class:`StepResult`. At a logged step every worker turns its result into one
row of numbers (:func:`worker_row`), the rows are all-gathered, and
:func:`average_over_workers` (pure, no process group) makes the logged metrics:

- each loss term: the mean over workers (each worker's loss is already
  normalised by the global number of positives, so the mean is the loss of
  the whole batch);
- ``positives/mean|min|max``: matched targets per worker;
- ``d{l}.match_changed``: over all workers, the share of the targets matched
  in the last decoder layer that layer ``l`` matches to another query;
- ``images``: images in the window, summed over workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detr_ray.criterion.matcher import Matching, matching_changes


@dataclass
class StepResult:
    """One optimiser step on this worker.

    ``losses`` (keyed as :func:`detr_ray.criterion.loss_keys.loss_keys`), ``matching`` and
    ``grad_norm`` (the same on every worker: gradients are all-reduced) are
    ``None`` when the step was skipped on every worker. ``bad`` (0-dim) is
    1.0 when the optimiser skipped the update on the device for non-finite
    gradients (known on the host only when read, at a logged step).
    """

    skipped: bool
    losses: dict[str, Tensor] | None = None
    matching: Matching | None = None
    grad_norm: Tensor | None = None
    bad: Tensor | None = None


@dataclass
class StepLog:
    """What one logged step reports (already combined over workers)."""

    global_step: int
    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    metrics: dict[str, float]


def worker_row(result: StepResult, names: list[str], num_layers: int, images: int) -> Tensor:
    """This worker's numbers, float64 on the CPU: ``len(names)`` loss terms
    (NaN if skipped), positives, targets matched in the last layer, images,
    then ``L - 1`` per-layer match changes."""
    skipped = result.skipped or (result.bad is not None and bool(result.bad.item()))
    if skipped or result.losses is None or result.matching is None:
        losses = torch.full((len(names),), float("nan"), dtype=torch.float64)
        positives, matched, changed = 0, 0, torch.zeros(num_layers - 1)
    else:
        losses = torch.stack([result.losses[n].detach().double() for n in names]).cpu()
        positives = result.matching.num_pairs
        changed, matched = matching_changes(result.matching)
    counts = torch.tensor([positives, matched, images], dtype=torch.float64)
    return torch.cat((losses, counts, changed.double().cpu()))


def average_over_workers(table: Tensor, names: list[str], num_layers: int) -> dict[str, float]:
    """Combine the ``(world_size, columns)`` rows of :func:`worker_row` (see module doc)."""
    table = table.double()
    n = len(names)
    metrics = dict(zip(names, table[:, :n].mean(0).tolist()))
    positives, matched, images = table[:, n], table[:, n + 1].sum(), table[:, n + 2].sum()
    changed = table[:, n + 3 : n + 3 + num_layers - 1].sum(0)
    metrics.update(
        {
            "positives/mean": float(positives.mean()),
            "positives/min": float(positives.min()),
            "positives/max": float(positives.max()),
            "images": float(images),
        }
    )
    for layer, value in enumerate(changed.tolist()):
        metrics[f"d{layer}.match_changed"] = value / float(matched) if matched else 0.0
    return metrics
