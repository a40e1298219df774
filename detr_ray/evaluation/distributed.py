"""Evaluation across workers: each runs its shard of the validation set, rank 0 scores.

A collective (``torch.distributed`` through :mod:`detr_ray.ops.dist`): every
rank calls :func:`detect_on_workers`; without a process group it is the
single-process evaluation. No Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from detr_ray.data.labels import LabelMap
from detr_ray.evaluation.coco_eval import to_coco_results
from detr_ray.evaluation.detect import detect_batch
from detr_ray.ops.dist import all_gather_objects, get_rank, get_world_size, is_main_process


@torch.no_grad()
def detect_on_workers(
    model: nn.Module,
    dataset: Dataset,
    label_map: LabelMap,
    *,
    batch_size: int,
    num_workers: int,
    collate: Callable,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> GatheredResults | None:
    """Detections of this worker's shard of ``dataset``, gathered to rank 0 as
    COCO results with the ids of the images run (``None`` on other ranks).

    ``model`` is put in eval mode for the run and back in train mode after.
    """
    sampler: DistributedSampler = DistributedSampler(
        dataset, get_world_size(), get_rank(), shuffle=False
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
    )
    model.eval()
    local = []
    for batch in loader:
        if batch is None:
            continue
        with autocast():
            detections = detect_batch(model, batch)
        for det in detections:
            local.append((det["image_id"], to_coco_results([det], label_map)))
    model.train()
    return gather_image_results(local)


@dataclass
class GatheredResults:
    """Every worker's detections, on rank 0: the COCO results and the ids of the
    images that were run (an unreadable image skipped by every worker is not)."""

    results: list[dict]
    image_ids: list[int]


def gather_image_results(local: Sequence[tuple[int, list[dict]]]) -> GatheredResults | None:
    """Every worker's ``(image_id, results)`` pairs -> rank 0's :class:`GatheredResults`.

    An image scored by several workers (a padded distributed sampler repeats a
    few) counts once. Returns ``None`` on the other ranks. Without a process
    group it is the input, flattened.
    """
    gathered = all_gather_objects(list(local))
    if not is_main_process():
        return None
    seen: dict[int, None] = {}  # insertion-ordered
    results: list[dict] = []
    for worker in gathered:
        for image_id, image_results in worker:  # type: ignore[attr-defined]
            if image_id not in seen:
                seen[image_id] = None
                results.extend(image_results)
    return GatheredResults(results, list(seen))
