"""What a run's workers need of a Ray cluster, and how many runs fit: pure arithmetic.

Read against ``ray.cluster_resources()`` (a mapping of resource names to
totals) by the driver of a run and of a sweep. Tune does not reserve the
worker groups its trials start, so a sweep counts each trial whole. No Ray
import here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from detr_ray.config import ExperimentConfig, ScalingConfig
from detr_ray.errors import ConfigError

TRIAL_DRIVER_CPUS = 0.01  # a sweep trial's own process only waits for its Train run


def check_cluster_gpus(num_workers: int, resources: Mapping[str, float]) -> None:
    """The same check against a running cluster's ``ray.cluster_resources()``."""
    gpus = resources.get("GPU", 0.0)
    if gpus < num_workers:
        raise ConfigError(
            f"scaling.use_gpu (--gpu) asks for {num_workers} GPU(s), one per worker, but the "
            f"cluster has {gpus:g} GPU(s) and {resources.get('CPU', 0.0):g} CPU(s): add GPU "
            "nodes, lower scaling.num_workers, or drop --gpu"
        )


def fit_trial_to_cluster(base: ExperimentConfig, cluster_cpus: float) -> ExperimentConfig:
    """Shrink ``scaling.cpus_per_worker`` so that one trial (its workers plus
    its own driver's share) fits the cluster, e.g. 2 workers x 1 CPU on a
    2-CPU laptop; an unchanged config would wait for resources forever."""
    scaling = base.scaling
    if base.scaling.use_gpu:
        return base
    need = scaling.num_workers * scaling.cpus_per_worker + TRIAL_DRIVER_CPUS
    if need <= cluster_cpus:
        return base
    fitted = math.floor((cluster_cpus - TRIAL_DRIVER_CPUS) / scaling.num_workers * 100) / 100
    if fitted <= 0:
        raise ConfigError(
            f"a trial needs scaling.num_workers={scaling.num_workers} workers but the cluster "
            f"has {cluster_cpus:g} CPUs: lower scaling.num_workers"
        )
    print(
        f"[detr-ray] a trial asks for {need:g} CPUs, the cluster has {cluster_cpus:g}: "
        f"scaling.cpus_per_worker {scaling.cpus_per_worker:g} -> {fitted:g}"
    )
    return dataclasses.replace(base, scaling=dataclasses.replace(scaling, cpus_per_worker=fitted))


def trials_at_once(
    scaling: ScalingConfig, resources: Mapping[str, float], requested: int | None
) -> tuple[int, str]:
    """How many trials can run at once on a cluster with ``resources`` (Ray's
    ``cluster_resources()``), and why, in a sentence.

    Tune does not reserve the worker groups its trials start: a trial admitted
    on its own small share starts a Train run whose workers may never find
    room, and the sweep deadlocks. So a trial counts whole: its workers'
    CPUs (and GPUs) plus its own share. ``requested`` (``--max-concurrent``)
    can lower the number, never raise it past what fits.

    Raises:
        ConfigError: not even one trial fits.
    """
    workers = scaling.num_workers
    cpus = resources.get("CPU", 0.0)
    gpus = resources.get("GPU", 0.0)
    cpu_need = workers * scaling.cpus_per_worker + TRIAL_DRIVER_CPUS
    fits = math.floor(cpus / cpu_need + 1e-9)
    per_worker = scaling.cpus_per_worker
    need = f"{cpu_need:g} CPUs ({workers} workers x {per_worker:g} + {TRIAL_DRIVER_CPUS:g})"
    have = f"{cpus:g} CPUs"
    if scaling.use_gpu:
        fits = min(fits, math.floor(gpus / workers + 1e-9))
        need += f" and {workers} GPUs"
        have += f" and {gpus:g} GPUs"
    if fits < 1:
        raise ConfigError(
            f"one trial needs {need} but the cluster has {have}: lower scaling.num_workers "
            "or scaling.cpus_per_worker, or add nodes"
        )
    at_once = min(fits, requested) if requested else fits
    why = f"{at_once} trial(s) at once: each needs {need}, the cluster has {have}"
    if requested and requested > fits:
        why += (
            f"; --max-concurrent {requested} lowered to {fits}: more trials would start worker "
            "groups that can never all be placed"
        )
    elif requested:
        why += f" (--max-concurrent {requested})"
    return at_once, why
