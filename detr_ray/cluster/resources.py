"""What a run's workers need of a Ray cluster, and how many runs fit: pure arithmetic.

Read against ``ray.cluster_resources()`` / ``ray.available_resources()``
(mappings of resource names to amounts) and the nodes' totals, by the driver
of a run (:mod:`detr_ray.cluster.waiting`) and of a sweep. Tune does not
reserve the worker groups its trials start, so a sweep counts each trial
whole. No Ray import here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from detr_ray.config import ExperimentConfig, ScalingConfig
from detr_ray.errors import ConfigError

TRIAL_DRIVER_CPUS = 0.01  # a sweep trial's own process only waits for its Train run
CHANGE_KEYS = "--num-workers, scaling.cpus_per_worker or --gpu"


@dataclass(frozen=True)
class WorkerNeed:
    """What a run cannot start without: ``workers`` workers (an elastic run's
    ``min_workers``) of ``cpus`` CPUs and ``gpus`` GPUs each. Each worker is
    one bundle of one placement group: it must fit on one node."""

    workers: int
    cpus: float
    gpus: int = 0

    @classmethod
    def of(cls, scaling: ScalingConfig) -> WorkerNeed:
        return cls(
            workers=scaling.min_workers or scaling.num_workers,  # null: a fixed size
            cpus=scaling.cpus_per_worker,
            gpus=1 if scaling.use_gpu else 0,
        )

    def __str__(self) -> str:
        """``2 workers x 1 CPU`` or ``8 workers x 1 CPU + 1 GPU``."""
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus} GPU" if self.gpus else "")
        return f"{self.workers} worker(s) x {each}"

    def per_node(self, node: Mapping[str, float]) -> int:
        """How many of these workers one node with resources ``node`` holds."""
        fits = math.floor(node.get("CPU", 0.0) / self.cpus + 1e-9)
        if self.gpus:
            fits = min(fits, math.floor(node.get("GPU", 0.0) / self.gpus + 1e-9))
        return fits

    def held_by(self, nodes: Sequence[Mapping[str, float]]) -> int:
        """How many of these workers the nodes hold together (each on one node)."""
        return sum(self.per_node(node) for node in nodes)

    def shortfall(self, nodes: Sequence[Mapping[str, float]], what: str) -> str | None:
        """``None`` if the nodes hold the workers, else a sentence naming the
        numbers: ``what`` says which amounts they are (``in total``, ``free``)."""
        if self.held_by(nodes) >= self.workers:
            return None
        cpus = sum(node.get("CPU", 0.0) for node in nodes)
        gpus = sum(node.get("GPU", 0.0) for node in nodes)
        largest = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
        have = f"{cpus:g} CPU(s) {what}" + (f" and {gpus:g} GPU(s)" if self.gpus else "")
        if len(nodes) > 1:
            have += f" on {len(nodes)} nodes (at most {largest:g} CPU(s) on one)"
        return f"the run needs {self} but the cluster has {have}"


def check_fits_ever(need: WorkerNeed, node_totals: Sequence[Mapping[str, float]]) -> None:
    """A cluster that cannot grow (started here, no autoscaler) whose nodes in
    total cannot hold ``need``: an error now rather than a wait for ever.

    Raises:
        ConfigError: naming both numbers and the keys to change.
    """
    short = need.shortfall(node_totals, "in total")
    if short:
        raise ConfigError(f"{short}: it can never start; change {CHANGE_KEYS}, or add nodes")


def check_cluster_gpus(num_workers: int, resources: Mapping[str, float]) -> None:
    """``--gpu`` on a cluster (``ray.cluster_resources()``) without a GPU a worker."""
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
