"""Training in plain ``torch.distributed`` processes (gloo on the CPU), without Ray.

What Ray Train's worker does, minus Ray: one process per rank, a gloo process
group, the engine built by :func:`detr_ray.train.build.build_engine` with the
trained module wrapped in DDP (as Ray's ``prepare_model`` wraps it), one
intra-op thread per process. :func:`train_in_processes` trains several
configs one after the other in the same processes (a process start and the
imports cost seconds; a tiny run, a fraction of one).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from detr_ray.config import ExperimentConfig
from detr_ray.data.labels import LabelMap


def train_in_processes(
    world_size: int, configs: list[dict], label_map: LabelMap, folder: Path
) -> list[dict]:
    """Train each of ``configs`` (YAML-shaped dicts) for its ``train.epochs`` on
    ``world_size`` processes; for each, rank 0's ``{"weights", "steps"}``: the
    reference DETR's final state dict and every logged step's metrics (combined
    over the workers), in order."""
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _rank,
        args=(world_size, configs, label_map.to_dict(), str(folder)),
        nprocs=world_size,
        join=True,
    )
    return [torch.load(folder / f"result{i}.pt", weights_only=True) for i in range(len(configs))]


def _rank(rank: int, world_size: int, configs: list[dict], label_map: dict, folder: str) -> None:
    from detr_ray.train.build import build_engine

    torch.set_num_threads(1)  # as a Ray Train worker with one CPU
    if world_size > 1:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch_dist.init_process_group(
            "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size
        )
    labels = LabelMap.from_dict(label_map)
    try:
        for index, raw in enumerate(configs):
            config = ExperimentConfig.from_dict(raw)
            wrap = None
            if world_size > 1:  # Ray's prepare_model on the CPU, with detr-ray's options

                def wrap(module):
                    return torch.nn.parallel.DistributedDataParallel(
                        module, forward_sync_buffers=False
                    )

            engine = build_engine(config, labels, wrap=wrap)
            steps: list[dict] = []
            while not engine.finished:
                engine.train_epoch(on_log=lambda step, into=steps: into.append(dict(step.metrics)))
            if rank == 0:
                weights = {
                    k: v.detach().clone() for k, v in engine.reference_detr.state_dict().items()
                }
                torch.save({"weights": weights, "steps": steps}, Path(folder) / f"result{index}.pt")
    except BaseException:
        if world_size > 1:
            torch_dist.destroy_process_group()
        raise
    if world_size > 1:
        torch_dist.barrier()
        exit_without_teardown()


def exit_without_teardown() -> None:
    """End a spawned rank whose results are on disk, skipping the gloo group's
    teardown: its C++ destructor can abort the process ("terminate called
    without an active exception", SIGABRT) while the peer's connection closes,
    a torch teardown race that has nothing to do with what the tests check."""
    os._exit(0)
