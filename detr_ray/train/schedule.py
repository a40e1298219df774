"""The learning rate's schedule, in world-size-free units: a resize moves neither
warm-up nor drops."""

from __future__ import annotations

import math

from detr_ray.config import ExperimentConfig


def lr_factor(
    images_seen: int,
    epoch: int,
    world_size: int,
    config: ExperimentConfig,
    budget_fraction: float = 0.0,
) -> float:
    """The learning rate's multiplier for the next step, from where training stands.

    Warm-up is linear over ``train.warmup_steps`` steps *at the full size*
    (``scaling.num_workers`` workers x ``train.batch_size``), i.e. over that many
    images; each drop epoch passed multiplies by ``lr_gamma``. With a time
    budget, a drop also comes once ``budget_fraction`` (the share of the budget
    spent) reaches the drop epoch's share of ``train.epochs``, whichever is
    first. With
    ``optim.lr_scaling`` (off by default) the rate also follows the global batch
    of the workers present: ``linear`` (world / num_workers) or ``sqrt``.
    """
    train, full_world = config.train, config.scaling.num_workers
    factor = 1.0
    if train.warmup_steps:
        full_batch = full_world * train.batch_size
        factor = min(1.0, (images_seen + full_batch) / (train.warmup_steps * full_batch))
    passed = sum(
        1
        for e in train.lr_drop_epochs
        if epoch >= e or (budget_fraction and budget_fraction >= e / train.epochs)
    )
    factor *= train.lr_gamma**passed
    if config.optim.lr_scaling == "linear":
        factor *= world_size / full_world
    elif config.optim.lr_scaling == "sqrt":
        factor *= math.sqrt(world_size / full_world)
    return factor
