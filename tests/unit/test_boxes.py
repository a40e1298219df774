import math

import pytest
import torch

from detr_ray.ops.boxes import (
    box_area,
    cxcywh_to_xyxy,
    giou,
    pairwise_giou,
    pairwise_iou,
    xyxy_to_cxcywh,
)

from tests.support.reference_math import giou_pairwise


def test_format_conversions_by_hand():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [10.0, 20.0, 4.0, 0.0]])
    xyxy = torch.tensor([[0.4, 0.3, 0.6, 0.7], [8.0, 20.0, 12.0, 20.0]])
    torch.testing.assert_close(cxcywh_to_xyxy(cxcywh), xyxy)
    torch.testing.assert_close(xyxy_to_cxcywh(xyxy), cxcywh)
    batch = torch.rand(3, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(batch)), batch)


def test_iou_cost_docstring_example():
    # The IoUCost example of the reference: cost = -GIoU with weight 1.
    boxes = torch.tensor([[1.0, 1, 2, 2], [2, 2, 3, 4]])
    gt = torch.tensor([[0.0, 0, 2, 4], [1, 2, 3, 4]])
    expected_cost = torch.tensor([[-0.1250, 0.1667], [0.1667, -0.5000]])
    torch.testing.assert_close(-pairwise_giou(boxes, gt), expected_cost, atol=1e-4, rtol=0)


def test_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    # overlap 1, union 4 + 4 - 1 = 7; identical; disjoint
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    # disjoint: enclosing 6x6 = 36, union 5 -> 0 - 31/36
    torch.testing.assert_close(pairwise_giou(a, b)[0, 2], torch.tensor(-31 / 36))


def test_elementwise_giou_is_the_diagonal_and_matches_plain_formula():
    g = torch.Generator().manual_seed(1)
    a = cxcywh_to_xyxy(torch.rand(7, 4, generator=g, dtype=torch.float64))
    b = cxcywh_to_xyxy(torch.rand(7, 4, generator=g, dtype=torch.float64))
    pairwise = pairwise_giou(a, b)
    torch.testing.assert_close(giou(a, b), pairwise.diagonal())
    torch.testing.assert_close(pairwise, giou_pairwise(a, b))
    assert (pairwise <= 1).all() and (pairwise >= -1).all()


def test_giou_is_invariant_to_per_axis_scaling():
    # Why the matcher may compute GIoU on normalised boxes: the reference uses pixels.
    g = torch.Generator().manual_seed(2)
    a = cxcywh_to_xyxy(torch.rand(6, 4, generator=g, dtype=torch.float64))
    b = cxcywh_to_xyxy(torch.rand(5, 4, generator=g, dtype=torch.float64))
    factor = torch.tensor([640.0, 427.0, 640.0, 427.0], dtype=torch.float64)
    torch.testing.assert_close(pairwise_giou(a * factor, b * factor), pairwise_giou(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_area_boxes_give_finite_values_and_gradients(dtype):
    point = torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=dtype, requires_grad=True)  # cxcywh
    line = torch.tensor([[0.2, 0.2, 0.0, 0.3]], dtype=dtype, requires_grad=True)
    a, b = cxcywh_to_xyxy(point), cxcywh_to_xyxy(line)
    values = torch.cat([giou(a, a), giou(a, b), pairwise_iou(a, b).flatten(), box_area(a)])
    assert torch.isfinite(values).all()
    values.sum().backward()
    assert torch.isfinite(point.grad).all() and torch.isfinite(line.grad).all()
    # Two identical points: no overlap and no enclosing area -> GIoU 0, not NaN.
    assert giou(a, a).item() == 0.0


def test_inverted_box_has_zero_area_not_negative():
    inverted = torch.tensor([[2.0, 2.0, 1.0, 1.0]])
    assert box_area(inverted).item() == 0.0
    assert math.isfinite(giou(inverted, torch.tensor([[0.0, 0, 1, 1]])).item())
