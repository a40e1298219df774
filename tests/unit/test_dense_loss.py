"""The dense auxiliary head's assignment and losses."""

import pytest
import torch

from detr_ray.criterion.dense_loss import assign_cells, dense_losses
from detr_ray.criterion.matcher import FlatTargets
from detr_ray.model.training_detr import cell_centers

from tests.support.reference_setup import reference_criterion


def test_cell_centres_are_relative_to_each_images_own_size():
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[1, :, 32:] = True  # the second image is 64 high and 32 wide
    centers = cell_centers(mask, (2, 2))  # cells of 32 x 32 pixels
    torch.testing.assert_close(
        centers[0], torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])
    )
    torch.testing.assert_close(
        centers[1], torch.tensor([[0.5, 0.25], [1.5, 0.25], [0.5, 0.75], [1.5, 0.75]])
    )


def test_assignment_by_hand():
    centers = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]] * 2)
    valid = torch.tensor([[True] * 4, [True, False, True, False]])  # image 1: right half padded
    targets = FlatTargets.from_list(
        [
            {
                "labels": torch.tensor([0, 1, 2]),
                "boxes": torch.tensor(
                    [
                        [0.25, 0.5, 0.5, 1.0],  # A: the left half: cells 0 and 2
                        [0.7, 0.7, 0.1, 0.1],  # B: no centre inside; the nearest cell is 3
                        [0.5, 0.5, 1.0, 1.0],  # C: everything; smaller boxes win 0, 2, 3
                    ]
                ),
            },
            {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.6, 0.5, 0.8, 0.9]])},
        ]
    )
    assigned = assign_cells(centers, valid, targets)
    assert assigned[0].tolist() == [0, 2, 0, 1]
    # image 1: its target (index 3) covers cells 0-3, but 1 and 3 are padding
    assert assigned[1].tolist() == [3, -1, 3, -1]
    empty = FlatTargets.from_list(
        [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    )
    assert (assign_cells(centers, valid, empty) == -1).all()


def test_dense_losses_by_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    criterion = reference_criterion(3)
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[1, 40:, :] = True
    centers = cell_centers(mask, (4, 4))
    valid = centers[..., 1] < 1  # the second image's last row of cells is padding
    logits = torch.randn(2, 16, 4, generator=g, dtype=torch.float64)
    boxes = torch.rand(2, 16, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    targets = FlatTargets.from_list(
        [
            {
                "labels": torch.tensor([0, 2]),
                "boxes": torch.tensor([[0.3, 0.3, 0.4, 0.5], [0.8, 0.7, 0.3, 0.3]]),
            },
            {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.6, 0.4]])},
        ]
    )
    terms = dense_losses(criterion, logits, boxes, centers, valid, targets)
    assigned = assign_cells(centers, valid, targets)
    # the same, cell by cell
    ce, l1, iou, pos, neg = 0.0, 0.0, 0.0, 0, 0
    for b in range(2):
        for s in range(16):
            if not valid[b, s]:
                continue
            t = int(assigned[b, s])
            label = 3 if t < 0 else int(targets.labels[t])
            weight = 0.1 if t < 0 else 1.0
            ce += -weight * torch.log_softmax(logits[b, s], -1)[label]
            if t >= 0:
                pos += 1
                l1 += (boxes[b, s] - targets.boxes_cxcywh[t].double()).abs().sum()
                from tests.support.reference_math import giou_one, to_xyxy

                iou += 1 - giou_one(to_xyxy(boxes[b, s]), to_xyxy(targets.boxes_cxcywh[t].double()))
            else:
                neg += 1
    expected = torch.stack((1.0 * ce / (pos + 0.1 * neg), 5.0 * l1 / pos, 2.0 * iou / pos))
    torch.testing.assert_close(terms, expected)
    assert pos >= 3  # every target has at least its own cell


def test_no_targets_means_background_everywhere():
    criterion = reference_criterion(3)
    centers = cell_centers(torch.zeros(1, 32, 32, dtype=torch.bool), (2, 2))
    valid = torch.ones(1, 4, dtype=torch.bool)
    empty = FlatTargets.from_list(
        [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    )
    logits = torch.zeros(1, 4, 4)
    terms = dense_losses(criterion, logits, torch.rand(1, 4, 4), centers, valid, empty)
    # four background cells of weight 0.1, each -log(1/4); normaliser max(0.4, 1) = 1
    assert terms[0].item() == pytest.approx(4 * 0.1 * torch.log(torch.tensor(4.0)).item())
    assert terms[1].item() == 0 and terms[2].item() == 0


def test_on_deformable_detr_the_dense_classification_is_focal_by_a_plain_loop():
    from tests.unit.test_focal_loss import _criterion

    g = torch.Generator().manual_seed(1)
    criterion = _criterion(num_classes=3)  # sigmoid focal, weights 1, alpha 0.25, gamma 2
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    # two levels of cells, as a Deformable DETR's tokens: 4 x 4 then 2 x 2
    centers = torch.cat([cell_centers(mask, (4, 4)), cell_centers(mask, (2, 2))], 1)
    valid = torch.ones(1, 20, dtype=torch.bool)
    logits = torch.randn(1, 20, 3, generator=g, dtype=torch.float64)
    boxes = torch.rand(1, 20, 4, generator=g, dtype=torch.float64) * 0.5 + 0.25
    targets = FlatTargets.from_list(
        [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.3, 0.3, 0.4, 0.5]])}]
    )
    terms = dense_losses(criterion, logits, boxes, centers, valid, targets)
    assigned = assign_cells(centers, valid, targets)
    focal, positives = 0.0, 0
    for s in range(20):
        positives += int(assigned[0, s] >= 0)
        for k in range(3):
            p = torch.sigmoid(logits[0, s, k])
            if assigned[0, s] >= 0 and k == 2:
                focal += -0.25 * (1 - p) ** 2 * torch.log(p)
            else:
                focal += -0.75 * p**2 * torch.log(1 - p)
    assert positives >= 2  # cells of both levels lie inside the target
    torch.testing.assert_close(terms[0], focal / positives)
