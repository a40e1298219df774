"""The test suite's tiers, timeouts and shared fixtures.

Each test lives in the folder of its tier, and the folder gives it its marker
(``pytest -m unit``; ``--strict-markers`` refuses any other):

- ``unit/``: in-process and fast (math, data, config, CLI parsing, checks);
- ``engine/``: the training engine in plain processes (``torch.distributed``
  over gloo, no Ray);
- ``services/``: real servers on loopback (MLflow, moto's S3), no Ray;
- ``ray/``: Ray Train and Tune on the session's one local Ray (``ray_session``);
- ``cluster/``: Ray clusters the test starts itself (several nodes on this
  machine, Ray's Jobs server, a fresh local Ray), real faults.

Every test has a timeout (``pytest-timeout``; pyproject's default, longer for
the ray and cluster tiers): a hang fails, naming the test, instead of running
into CI's limit.

``make test`` runs the suite in two lanes at once (``tests/lanes.py``): the
ray tier in one pytest process, every other tier in another, so that one
lane's waits overlap the other's work. A test that starts a Ray of its own
gives it a private Ray temp folder (``RAY_TMPDIR``), so that no test ever
joins another's cluster by its record there.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from detr_ray.checkpoint import checkpoint_dict, save_checkpoint
from detr_ray.config import AugmentationConfig, preset_config
from detr_ray.model.build import build_model

from tests.support.datasets import SHAPE_LABELS, shapes_factory
from tests.support.ports import free_port

TIERS = ("unit", "engine", "services", "ray", "cluster")
TIMEOUT_S = {"cluster": 1200, "ray": 900}  # the others: pyproject's timeout


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = item.path.parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid} is in no tier folder ({', '.join(TIERS)})")
        item.add_marker(getattr(pytest.mark, tier))
        if tier in TIMEOUT_S and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_S[tier]))


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


@pytest.fixture(scope="session")
def make_shapes(tmp_path_factory):
    """``make_shapes(num_train, num_val, size=64, seed=0, kind="shapes")``: a generated
    dataset, made once per session for each set of arguments (read-only: a test that
    changes files generates its own)."""
    return shapes_factory(tmp_path_factory.mktemp("datasets"))


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
    # A Ray temp folder of the session's own (short: Ray's socket paths): Ray
    # Train's placement-group cleaner finds "its" cluster's State API by the
    # record there, and must never find another Ray running on this machine.
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    import ray

    # "local": a new Ray of this session's own, whatever other Ray runs on the machine.
    # Its dashboard is the State API through which Ray Train's placement-group
    # cleaner sees that a run's controller died (a sweep's stopped trial): without
    # it, the run's workers' CPUs stay reserved (detr-ray's own init_ray does the same).
    dashboard = free_port()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=True,
        dashboard_port=dashboard,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}},
    )
    yield
    ray.shutdown()
