"""Shared test fixtures: small random DETR outputs and targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from detr_ray.checkpoint import checkpoint_dict, save_checkpoint
from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import preset_config
from detr_ray.data.labels import LabelMap
from detr_ray.model.build import build_model

sys.path.insert(0, str(Path(__file__).parent))  # tests' own helpers (reference_math)


def random_image_targets(generator, num_targets, num_classes, img_hw, dtype=torch.float64):
    """Targets of one image: labels, absolute xyxy boxes inside it, normalised cxcywh."""
    h, w = img_hw
    xy1 = torch.rand(num_targets, 2, generator=generator, dtype=dtype) * 0.7
    wh = torch.rand(num_targets, 2, generator=generator, dtype=dtype) * 0.28 + 0.02
    xyxy_norm = torch.cat([xy1, xy1 + wh], 1)
    factor = torch.tensor([w, h, w, h], dtype=dtype)
    abs_xyxy = xyxy_norm * factor
    cxcywh = torch.cat([xy1 + wh / 2, wh], 1)
    labels = torch.randint(0, num_classes, (num_targets,), generator=generator)
    return {"labels": labels, "boxes": cxcywh, "boxes_abs": abs_xyxy, "hw": (h, w)}


@pytest.fixture
def make_batch():
    """Build ``(cls_scores (L,B,Q,K+1), bbox_preds (L,B,Q,4), targets)`` in float64."""

    def build(num_layers, num_queries, num_classes, counts, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        num_images = len(counts)
        cls_scores = (
            torch.randn(
                num_layers, num_images, num_queries, num_classes + 1, generator=g, dtype=dtype
            )
            * 2
        )
        centre = torch.rand(num_layers, num_images, num_queries, 2, generator=g, dtype=dtype)
        size = torch.rand(num_layers, num_images, num_queries, 2, generator=g, dtype=dtype) * 0.5
        bbox_preds = torch.cat([centre, size], -1)
        sizes = [(int(h), int(w)) for h, w in torch.randint(200, 900, (num_images, 2), generator=g)]
        targets = [
            random_image_targets(g, n, num_classes, hw, dtype) for n, hw in zip(counts, sizes)
        ]
        return cls_scores, bbox_preds, targets

    return build


@pytest.fixture(autouse=True)
def _no_outside_tracking_server(monkeypatch):
    """A developer's MLFLOW_TRACKING_URI would send test runs to their server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


SHAPE_LABELS = LabelMap((1, 2, 3), ("circle", "rectangle", "triangle"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A freshly initialised ``detr_r18_tiny`` saved as a detr-ray checkpoint: (path, model)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    config = preset_config("detr_r18_tiny", num_classes=3)
    model = build_model(config)
    augmentation = AugmentationConfig(train_scales=(64,), max_size=128, val_scale=64)
    path = save_checkpoint(
        checkpoint_dict(model, config, SHAPE_LABELS, augmentation, epoch=3),
        root / "run" / "checkpoint.pt",
    )
    return path, model


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (starting Ray costs seconds)."""
    import os

    os.environ.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_TRAIN_ENABLE_PRINT_PATCH="0",
        RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    # Dummy credentials for the S3 API the storage tests start on loopback (moto);
    # set before Ray starts, so that its workers have them too.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
