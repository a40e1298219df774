import math

import pytest
import torch

from detr_ray.criterion.loss_keys import loss_keys
from detr_ray.criterion.matcher import FlatTargets
from detr_ray.criterion.set_loss import SetCriterion

from tests.support.reference_math import loss_single_layer
from tests.support.reference_setup import reference_criterion, reference_matcher


def reference_losses(criterion, cls_scores, bbox_preds, targets, matching):
    """The reference's loss(): loss_single per layer, weighted, reference names."""
    gts = [(t["labels"], t["boxes_abs"], t["hw"]) for t in targets]
    num_layers, num_images = cls_scores.shape[:2]
    out = {}
    for layer in range(num_layers):
        assignments = [matching.for_image(layer, i) for i in range(num_images)]
        cls, bbox, iou = loss_single_layer(
            cls_scores[layer],
            bbox_preds[layer],
            gts,
            criterion.num_classes,
            criterion.bg_cls_weight,
            assignments,
        )
        prefix = "" if layer == num_layers - 1 else f"d{layer}."
        out[prefix + "loss_cls"] = criterion.cls_weight * cls
        out[prefix + "loss_bbox"] = criterion.bbox_weight * bbox
        out[prefix + "loss_iou"] = criterion.iou_weight * iou
    return out


@pytest.mark.parametrize("counts", [[3, 0, 5, 1], [0, 0, 0], [4, 13]])
@pytest.mark.parametrize("bg_cls_weight", [0.1, 0.0, 1.0])
def test_criterion_equals_reference_loop(make_batch, counts, bg_cls_weight):
    num_classes = 5
    cls_scores, bbox_preds, targets = make_batch(3, 12, num_classes, counts, seed=len(counts))
    criterion = SetCriterion(
        num_classes,
        reference_matcher(),
        cls_weight=1.5,
        bbox_weight=5.0,
        iou_weight=2.0,
        bg_cls_weight=bg_cls_weight,
        sync_cls_avg_factor=True,
    )
    losses = criterion(cls_scores, bbox_preds, targets)
    matching = criterion.matcher(cls_scores, bbox_preds, targets)
    expected = reference_losses(criterion, cls_scores, bbox_preds, targets, matching)
    assert list(losses) == loss_keys(3)
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(losses["loss"], sum(expected.values()), atol=1e-6, rtol=0)


def test_loss_names_follow_the_reference():
    names = loss_keys(6)
    assert names[:3] == ["loss_cls", "loss_bbox", "loss_iou"]
    assert names[3:6] == ["d0.loss_cls", "d0.loss_bbox", "d0.loss_iou"]
    assert names[-2] == "d4.loss_iou" and names[-1] == "loss"
    assert len(names) == 3 * 6 + 1


def test_hand_worked_example():
    # One layer, one image, two queries, one class, one target matched to query 0.
    # Uniform logits: CE = log 2 for every query; the normaliser is
    # 1 + 0.1 * 1, and the weighted sum is 1 * log 2 + 0.1 * log 2 -> loss_cls = log 2.
    cls_scores = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    bbox_preds = torch.tensor([[[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]]], dtype=torch.float64)
    target = {
        "labels": torch.tensor([0]),
        "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]], dtype=torch.float64),
    }
    criterion = reference_criterion(1, cls_weight=1.0, bbox_weight=1.0, iou_weight=1.0)
    losses = criterion(cls_scores, bbox_preds, [target])
    assert losses["loss_cls"].item() == pytest.approx(math.log(2))
    assert losses["loss_bbox"].item() == pytest.approx(0.1)  # |0.5 - 0.6|
    # boxes [0.4,0.4,0.6,0.6] vs [0.5,0.4,0.7,0.6]: inter 0.02, union 0.06, enclose 0.06
    assert losses["loss_iou"].item() == pytest.approx(1 - 1 / 3)


def test_gradcheck_for_a_fixed_matching(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 4, 3, [2, 0, 3], seed=3)
    criterion = reference_criterion(3)
    flat = FlatTargets.from_list(targets)
    matching = criterion.matcher(cls_scores, bbox_preds, flat)
    cls_scores.requires_grad_(True)
    bbox_preds.requires_grad_(True)

    def total(cls, boxes):
        return criterion.losses(cls, boxes, flat, matching)["loss"]

    assert torch.autograd.gradcheck(total, (cls_scores, bbox_preds))


def test_all_empty_batch_gives_finite_losses_and_background_gradients(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 5, 3, [0, 0])
    cls_scores.requires_grad_(True)
    bbox_preds.requires_grad_(True)
    criterion = reference_criterion(3)
    losses = criterion(cls_scores, bbox_preds, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0 and losses["loss_iou"].item() == 0
    # every one of the 10 queries is background: sum(0.1 * CE) / max(0.1 * 10, 1)
    ce = torch.nn.functional.cross_entropy(
        cls_scores[1].reshape(-1, 4).detach(), torch.full((10,), 3), reduction="sum"
    )
    assert losses["loss_cls"].item() == pytest.approx(0.1 * ce.item() / 1.0)
    losses["loss"].backward()
    assert torch.isfinite(cls_scores.grad).all() and cls_scores.grad.abs().sum() > 0
    # the box head gets an exact zero gradient, but it is in the graph (DDP needs that)
    assert bbox_preds.grad is not None and bbox_preds.grad.abs().sum() == 0


def test_zero_area_targets_and_predictions_are_finite(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 5, 3, [2, 1])
    targets[0]["boxes"][0, 2:] = 0.0
    bbox_preds[:, :, :, 2:] = 0.0  # every prediction a point
    bbox_preds.requires_grad_(True)
    losses = reference_criterion(3)(cls_scores, bbox_preds, targets)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert torch.isfinite(bbox_preds.grad).all()


def test_loss_is_float32_under_half_precision_inputs(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 5, 3, [2, 1], dtype=torch.float32)
    losses = reference_criterion(3)(cls_scores.bfloat16(), bbox_preds.bfloat16(), targets)
    assert losses["loss"].dtype == torch.float32


def test_out_of_range_label_is_a_clear_error(make_batch):
    cls_scores, bbox_preds, targets = make_batch(1, 5, 3, [2])
    targets[0]["labels"][1] = 3
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*from \d to 3"):
        reference_criterion(3)(cls_scores, bbox_preds, targets)


def test_logit_count_must_be_num_classes_plus_one(make_batch):
    cls_scores, bbox_preds, targets = make_batch(1, 5, 3, [1])
    with pytest.raises(ValueError, match="num_classes \\+ 1 = 5"):
        reference_criterion(4)(cls_scores, bbox_preds, targets)
