"""Box formats and overlap measures.

Formats (the last dimension of every box tensor is 4):

- ``cxcywh``: centre x, centre y, width, height. The model predicts these,
  normalised to ``[0, 1]`` by the unpadded image size.
- ``xyxy``: left, top, right, bottom. Used for IoU / GIoU and for absolute
  pixel boxes.

Every function here is differentiable and NaN-free on degenerate input: a
zero-area box gives a finite IoU / GIoU (its union or enclosing area is
clamped to ``eps``). Nothing asserts on box validity, because model
predictions early in training can be anything; data loading is where user
boxes are validated.

GIoU is invariant under scaling x and y by separate positive factors (every
area involved scales by ``sx * sy``), so it may be computed on normalised or
absolute boxes alike; the reference computes it on absolute ``xyxy``.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-7


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """``(..., 4)`` cxcywh -> ``(..., 4)`` xyxy."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    half_w, half_h = 0.5 * w, 0.5 * h
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(..., 4)`` cxcywh."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` area; an inverted box has area 0."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)


def _overlap_terms(a_xyxy: Tensor, b_xyxy: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, union and enclosing area of broadcastable ``(..., 4)`` xyxy boxes.

    Works coordinate plane by plane (``unbind(-1)``), so a ``(4, ...)`` tensor
    seen through ``movedim(0, -1)`` is processed as contiguous planes: that is
    how the matcher computes its large cost tensors quickly.
    """
    ax1, ay1, ax2, ay2 = a_xyxy.unbind(-1)
    bx1, by1, bx2, by2 = b_xyxy.unbind(-1)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = inter_w * inter_h
    union = (area_a + area_b - inter).clamp(min=eps)
    enclose_w = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    enclose_h = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    enclose = (enclose_w * enclose_h).clamp(min=eps)
    return inter / union, union, enclose


def pairwise_iou(a_xyxy: Tensor, b_xyxy: Tensor, eps: float = EPS) -> Tensor:
    """IoU of every pair: ``(N, 4)`` x ``(M, 4)`` xyxy -> ``(N, M)``."""
    iou, _, _ = _overlap_terms(a_xyxy[:, None, :], b_xyxy[None, :, :], eps)
    return iou


def pairwise_giou(a_xyxy: Tensor, b_xyxy: Tensor, eps: float = EPS) -> Tensor:
    """Generalised IoU of every pair: ``(N, 4)`` x ``(M, 4)`` xyxy -> ``(N, M)`` in [-1, 1]."""
    return giou(a_xyxy[:, None, :], b_xyxy[None, :, :], eps)


def giou(a_xyxy: Tensor, b_xyxy: Tensor, eps: float = EPS) -> Tensor:
    """Element-wise generalised IoU of broadcastable ``(..., 4)`` xyxy boxes -> ``(...)``.

    ``GIoU = IoU - (enclosing - union) / enclosing``. With ``(N, 4)`` inputs
    this is the aligned ``(N,)`` GIoU used by the loss.
    """
    iou, union, enclose = _overlap_terms(a_xyxy, b_xyxy, eps)
    return iou - (enclose - union) / enclose
