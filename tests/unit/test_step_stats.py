"""Combining the workers' step numbers (pure: no process group)."""

import math

import pytest
import torch

from detr_ray.criterion.loss_keys import loss_keys
from detr_ray.criterion.matcher import Matching
from detr_ray.train.step_stats import StepResult, average_over_workers, worker_row

NAMES = loss_keys(2)  # loss_cls, loss_bbox, loss_iou, d0.loss_cls, d0.loss_bbox, d0.loss_iou, loss


def result(values, last_queries, first_queries, counts):
    """A step whose losses are ``values`` and whose 2-layer matching pairs each
    image's targets (in order) with the given queries."""
    image_idx = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    targets = torch.arange(sum(counts))
    return StepResult(
        skipped=False,
        losses={n: torch.tensor(v) for n, v in zip(NAMES, values)},
        matching=Matching(
            image_idx=image_idx,
            query_idx=torch.tensor([first_queries, last_queries]),
            target_idx=torch.stack([targets, targets]),
            counts=tuple(counts),
        ),
        grad_norm=torch.tensor(1.0),
    )


def test_two_workers_combined_by_hand():
    # worker 0: 3 targets (2 + 1), layer 0 disagrees with the last layer on one of them
    a = result(
        [1, 2, 3, 4, 5, 6, 21], last_queries=[0, 1, 2], first_queries=[0, 4, 2], counts=[2, 1]
    )
    # worker 1: 1 target, both layers agree
    b = result([3, 4, 5, 6, 7, 8, 33], last_queries=[3], first_queries=[3], counts=[1])
    table = torch.stack(
        [worker_row(a, NAMES, num_layers=2, images=2), worker_row(b, NAMES, num_layers=2, images=3)]
    )
    metrics = average_over_workers(table, NAMES, num_layers=2)
    assert metrics["loss_cls"] == 2.0 and metrics["d0.loss_iou"] == 7.0 and metrics["loss"] == 27.0
    assert (metrics["positives/mean"], metrics["positives/min"], metrics["positives/max"]) == (
        2.0,
        1.0,
        3.0,
    )
    assert metrics["d0.match_changed"] == pytest.approx(1 / 4)  # 1 of the 4 matched targets
    assert metrics["images"] == 5.0


def test_a_skipped_worker_row_has_no_losses_and_no_positives():
    row = worker_row(StepResult(skipped=True), NAMES, num_layers=2, images=4)
    metrics = average_over_workers(row[None], NAMES, num_layers=2)
    assert all(math.isnan(metrics[n]) for n in NAMES)
    assert metrics["positives/max"] == 0.0 and metrics["d0.match_changed"] == 0.0
    assert metrics["images"] == 4.0


def test_the_average_equals_a_plain_loop_over_random_rows():
    g = torch.Generator().manual_seed(0)
    num_layers, world = 4, 5
    names = loss_keys(num_layers)
    table = torch.rand(world, len(names) + 3 + num_layers - 1, generator=g, dtype=torch.float64)
    table[:, len(names) + 1] = torch.randint(1, 9, (world,), generator=g).double()  # matched
    metrics = average_over_workers(table, names, num_layers)
    rows = table.tolist()
    for column, name in enumerate(names):
        assert metrics[name] == pytest.approx(sum(r[column] for r in rows) / world)
    matched = sum(r[len(names) + 1] for r in rows)
    for layer in range(num_layers - 1):
        changed = sum(r[len(names) + 3 + layer] for r in rows)
        assert metrics[f"d{layer}.match_changed"] == pytest.approx(changed / matched)
