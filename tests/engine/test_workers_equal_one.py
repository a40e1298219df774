"""N workers train exactly like one worker with the whole batch: positives are
averaged over the workers present (``reduce_mean``) and DDP averages gradients.

Proved in plain gloo processes (``tests/support/gloo.py``), with and without
the training-time accelerators, and with uneven shares (3 workers); the Ray
seam itself is proved once, in ``tests/ray/test_train.py``.
"""

from __future__ import annotations

import pytest
import torch

from tests.support.datasets import SHAPE_LABELS
from tests.support.experiments import FIXED_DATA, TINY_DEFORMABLE, tiny_experiment
from tests.support.gloo import train_in_processes

# Deformable DETR (its set loss is focal) with both of its options, and the
# dense head on every level's cells.
ACCELERATORS = [
    pytest.param({"train": {}}, id="reference DETR"),
    pytest.param({"train": {"query_groups": 3}}, id="query groups"),
    pytest.param({"train": {"dense_aux_weight": 2.0}}, id="dense head"),
    pytest.param(
        {
            "model": {**TINY_DEFORMABLE, "with_box_refine": True, "two_stage": True},
            "train": {"dense_aux_weight": 2.0},
        },
        id="deformable two-stage, dense head",
    ),
]
KEYS = ["loss", "loss_cls", "d0.loss_bbox", "loss_iou", "grad_norm"]


def _config(shapes, tmp_path, workers: int, batch: int, model=None, train=None) -> dict:
    # Deterministic data (no flip or crop, one scale, every image padded to 64 x
    # 64 whatever its batch: group norm sees the same padding) and no dropout.
    raw = tiny_experiment(
        shapes,
        tmp_path / "runs",
        f"w{workers}",
        data=FIXED_DATA,
        model={"dropout": 0.0, "num_classes": SHAPE_LABELS.num_classes, **(model or {})},
        scaling={"num_workers": workers},
        train={"batch_size": batch, **(train or {})},
    )
    return raw


@pytest.fixture(scope="module")
def runs(make_shapes, tmp_path_factory):
    """Every comparison, trained in one set of processes per world size."""
    shapes = make_shapes(num_train=16, num_val=4, size=64, seed=1)
    tmp = tmp_path_factory.mktemp("gloo")
    cases = [a.values[0] for a in ACCELERATORS]
    one_step = [
        {"model": c.get("model"), "train": {**c["train"], "max_steps_per_epoch": 1}} for c in cases
    ]
    two = train_in_processes(
        2, [_config(shapes, tmp, 2, 2, **c) for c in one_step], SHAPE_LABELS, tmp / "two"
    )
    one = train_in_processes(
        1,
        [_config(shapes, tmp, 1, 4, **c) for c in one_step] + [_config(shapes, tmp, 1, 6)],
        SHAPE_LABELS,
        tmp / "one",
    )
    (three,) = train_in_processes(3, [_config(shapes, tmp, 3, 2)], SHAPE_LABELS, tmp / "three")
    return {"two": two, "one": one[:-1], "one6": one[-1], "three": three}


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize("index", range(len(ACCELERATORS)), ids=[a.id for a in ACCELERATORS])
def test_two_workers_take_the_step_one_worker_takes_with_the_whole_batch(runs, index):
    # one optimiser step: 2 workers x batch 2 against 1 worker x batch 4, same 4 images
    two, one = runs["two"][index], runs["one"][index]
    _assert_same_weights(two["weights"], one["weights"], atol=1e-5)
    # The losses (averaged over workers) and the gradient norm agree too: the
    # Adam step alone is insensitive to a uniform gradient scale, these are not.
    (step_two,), (step_one,) = two["steps"], one["steps"]
    keys = list(KEYS)
    case = ACCELERATORS[index].values[0]
    if case["train"].get("query_groups"):  # the extra groups' mean, under their own names
        keys += ["groups/loss", "groups/loss_cls", "groups/d0.loss_iou"]
    if case["train"].get("dense_aux_weight"):  # normalised by positives over all workers
        keys += ["dense/loss_cls", "dense/loss_bbox", "dense/loss_iou"]
    if case.get("model", {}).get("two_stage"):  # the encoder's proposals, matched too
        keys += ["enc.loss_cls", "enc.loss_bbox", "enc.loss_iou"]
    for key in keys:
        assert step_two[key] == pytest.approx(step_one[key], rel=1e-5), key
    # the two workers' shares: positives per worker add up to the single worker's
    assert 2 * step_two["positives/mean"] == step_one["positives/mean"]
    assert (step_two["world_size"], step_one["world_size"]) == (2.0, 1.0)


def test_three_workers_with_uneven_shares_train_exactly_like_one(runs):
    # 16 images, 3 workers x batch 2: steps of 6, 6 and 4 images, the last shared
    # 2/1/1. One worker x batch 6 takes the same images per step (6, 6, 4), so
    # with positives averaged over the workers present the weights after the
    # epoch must agree, uneven last step included.
    three, one = runs["three"], runs["one6"]
    assert len(three["steps"]) == len(one["steps"]) == 3
    _assert_same_weights(three["weights"], one["weights"], atol=2e-5)
    for key in KEYS:
        by_step = [[s[key] for s in run["steps"]] for run in (three, one)]
        assert by_step[0] == pytest.approx(by_step[1], rel=1e-4), key
