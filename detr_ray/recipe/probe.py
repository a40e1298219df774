"""A short timed run of a candidate's training step on the real data.

The probe builds the engine a run would build (the model, the datasets with
their augmentation, the training objective) and times a few steps, each with
its batch loaded the way a worker loads it (in the process, as with
``data.num_workers: 0``), on the threads one worker gets
(``scaling.cpus_per_worker``). Seconds, not minutes: one warm-up step and a
few timed ones. On a cluster (``--address``) it runs as one Ray task with one
worker's resources, so what it measures is that cluster's worker.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from detr_ray.config import ExperimentConfig
from detr_ray.data.labels import LabelMap


@dataclass(frozen=True)
class ProbeResult:
    """One worker's speed: ``step_s`` median seconds a step (batch loading
    included) of ``batch`` images over ``steps`` timed steps, so
    ``images_per_s`` for one worker."""

    step_s: float
    batch: int
    steps: int

    @property
    def images_per_s(self) -> float:
        return self.batch / self.step_s


def probe(config: ExperimentConfig, label_map: LabelMap, steps: int = 3) -> ProbeResult:
    """Time ``steps`` training steps of ``config`` (after one warm-up step)."""
    from detr_ray.train.build import build_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.scaling.cpus_per_worker)))
    try:
        device = "cuda" if config.scaling.use_gpu and torch.cuda.is_available() else "cpu"
        engine = build_engine(config, label_map, device)
        size, batch = len(engine.train_set), config.train.batch_size  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(config.train.seed)
        times = []
        for step in range(steps + 1):
            start = time.perf_counter()
            indices = torch.randint(size, (batch,), generator=generator).tolist()
            engine.train_step(engine.collate([engine.train_set[i] for i in indices]))
            if device == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step warms up (allocations, the optimiser's state)
                times.append(time.perf_counter() - start)
        return ProbeResult(statistics.median(times), batch, len(times))
    finally:
        torch.set_num_threads(threads)


def probe_on_cluster(
    config: ExperimentConfig, label_map: LabelMap, address: str, steps: int = 3
) -> ProbeResult:
    """:func:`probe` as one Ray task with one worker's resources on the cluster at ``address``."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    scaling = config.scaling
    remote = ray.remote(num_cpus=scaling.cpus_per_worker, num_gpus=1 if scaling.use_gpu else 0)(
        _probe_task
    )
    return ray.get(remote.remote(config.to_dict(), label_map.to_dict(), steps))


def _probe_task(config: dict, label_map: dict, steps: int) -> ProbeResult:
    return probe(ExperimentConfig.from_dict(config), LabelMap.from_dict(label_map), steps)
