"""From a config to the engine a training process trains with.

One visible order, as in DETR's ``main.py``: the Ray worker, the plain
``torch.distributed`` tests and the benchmarks all build through
:func:`build_engine`, so each trains exactly what a run trains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detr_ray.config import ExperimentConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.labels import LabelMap
from detr_ray.model.build import Detector, build_model
from detr_ray.model.training_detr import TrainingDETR
from detr_ray.train.engine import Engine
from detr_ray.train.hooks import WorkerHooks
from detr_ray.train.inputs import build_datasets
from detr_ray.train.seeds import seed_everything


def build_trained_module(detr: Detector, config: ExperimentConfig) -> nn.Module:
    """What the optimiser trains: ``detr``, or with a training-time accelerator on
    (``train.query_groups`` > 1, ``train.dense_aux_weight`` > 0) a
    :class:`TrainingDETR` around it (the extra parts exist only there)."""
    train = config.train
    if train.query_groups == 1 and train.dense_aux_weight == 0:
        return detr
    return TrainingDETR(detr, train.query_groups, dense_head=train.dense_aux_weight > 0)


def build_engine(
    config: ExperimentConfig,
    label_map: LabelMap,
    device: torch.device | str = "cpu",
    *,
    detr: Detector | None = None,
    datasets: tuple[CocoDetection, CocoDetection] | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    hooks: WorkerHooks | None = None,
) -> Engine:
    """The :class:`Engine` of one training process.

    Args:
        detr: the model (e.g. initialised from pretrained weights); ``None``
            builds ``config.model`` after seeding with ``train.seed``, so that
            every process starts from the same weights.
        datasets: ``(train_set, val_set)``; ``None`` builds them from ``config.data``.
        wrap: wraps the trained module on ``device`` for data parallelism (Ray
            Train's ``prepare_model``, or ``DistributedDataParallel`` in a
            plain process group); ``None`` trains it as it is.
        hooks: fault injection for tests (:mod:`detr_ray.train.hooks`).
    """
    if detr is None:
        seed_everything(config.train.seed)
        detr = build_model(config.model)
    train_set, val_set = datasets if datasets is not None else build_datasets(config, label_map)
    module = build_trained_module(detr, config).to(torch.device(device))
    if config.train.channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    distributed = wrap(module) if wrap is not None else module
    return Engine(config, distributed, train_set, val_set, label_map, device, hooks=hooks)
