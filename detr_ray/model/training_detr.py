"""The detector that training sees: the reference model plus training-only parts.

Two published ways to speed up DETR's slow start without changing the model
that runs at inference, each off by default:

- **query groups** (Group DETR: Chen et al., "Group DETR: Fast DETR Training
  with Group-Wise One-to-Many Assignment", ICCV 2023): ``K`` groups of ``Q``
  object queries, each matched one-to-one to the targets on its own, with
  self-attention kept within a group, so that each group sees exactly what
  the reference DETR's queries see. Group 0 is the DETR's own.
- **a dense auxiliary head** (after Co-DETR: Zong et al., "DETRs with
  Collaborative Hybrid Assignments Training", ICCV 2023): a class and a box
  predicted at every encoder token, trained one-to-many (every token inside
  an object, see :mod:`detr_ray.criterion.dense_loss`), so the backbone and encoder
  learn where objects are from every location, not only through the few
  matched queries. On Deformable DETR (on which Co-DETR was built) the
  tokens are every level's cells, and the head's classes are sigmoids as the
  detector's are.

:class:`TrainingDETR` owns the extra queries and the head, around a DETR or
a Deformable DETR (query groups: DETR only); they are never part of the
detector's own ``state_dict``, so checkpoints, export and evaluation see the
reference model only. Every trained module's output becomes a
:class:`TrainingOutput` (:func:`as_training_output`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from detr_ray.model.build import Detector
from detr_ray.model.deformable.detector import PRIOR_PROB, DeformableDETR, DeformableOutput
from detr_ray.model.detr import DETR, MLP


class DenseOutput(NamedTuple):
    """The dense head's predictions at every encoder token.

    ``cls_logits (B, S, K + 1)`` (softmax, background last) or ``(B, S, K)``
    (sigmoid, Deformable DETR); ``boxes_cxcywh (B, S, 4)`` normalised;
    ``centers (B, S, 2)`` each token's cell centre ``(x, y)`` relative to its
    image's unpadded size; ``valid (B, S)`` False over padding.
    """

    cls_logits: Tensor
    boxes_cxcywh: Tensor
    centers: Tensor
    valid: Tensor


class TrainingOutput(NamedTuple):
    """What a training step gets from the trained module.

    ``cls_scores (L, B, Q', C)`` and ``bbox_preds (L, B, Q', 4)`` of every
    decoder layer (``Q' = K * Q`` with ``K`` query groups); ``dense`` with the
    dense head; ``enc_logits (B, S, K)`` and ``enc_boxes (B, S, 4)``, a
    two-stage Deformable DETR's encoder proposals.
    """

    cls_scores: Tensor
    bbox_preds: Tensor
    dense: DenseOutput | None = None
    enc_logits: Tensor | None = None
    enc_boxes: Tensor | None = None


def as_training_output(outputs: tuple) -> TrainingOutput:
    """A trained module's output (DETR's ``(cls_scores, bbox_preds)``, a
    :class:`DeformableOutput`, or a :class:`TrainingOutput`) as a :class:`TrainingOutput`."""
    if isinstance(outputs, TrainingOutput):
        return outputs
    if isinstance(outputs, DeformableOutput):
        return TrainingOutput(outputs.cls_logits, outputs.bbox_preds, None, *outputs[2:])
    cls_scores, bbox_preds = outputs
    return TrainingOutput(cls_scores, bbox_preds)


class DenseHead(nn.Module):
    """Class logits ``(B, S, C)`` and normalised cxcywh boxes ``(B, S, 4)`` per token.

    ``C = K + 1`` (softmax, background last), or ``K`` sigmoids whose bias
    starts every class at probability 0.01 (as the focal loss wants).
    """

    def __init__(self, d_model: int, num_classes: int, sigmoid: bool = False):
        super().__init__()
        self.class_head = nn.Linear(d_model, num_classes + (0 if sigmoid else 1))
        self.box_head = MLP(d_model, d_model, 4, 3)
        if sigmoid:
            nn.init.constant_(self.class_head.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def forward(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.class_head(memory), self.box_head(memory).sigmoid()


class TrainingDETR(nn.Module):
    """``detr`` with ``num_groups - 1`` extra groups of its queries and, with
    ``dense_head``, a :class:`DenseHead` on the encoder's output.

    ``forward(images, padding_mask)`` returns a :class:`TrainingOutput`: with
    ``K`` groups, group ``g``'s queries are ``g * Q ... (g + 1) * Q - 1``.
    Query groups need a DETR; the dense head works on both families.
    """

    def __init__(self, detr: Detector, num_groups: int = 1, dense_head: bool = False):
        super().__init__()
        if num_groups < 1 or (num_groups == 1 and not dense_head):
            raise ValueError("a TrainingDETR adds query groups (>= 2), a dense head, or both")
        if num_groups > 1 and not isinstance(detr, DETR):
            raise ValueError("query groups are implemented for DETR only, not Deformable DETR")
        self.detr = detr
        self.num_groups = num_groups
        self.extra_queries = None
        if isinstance(detr, DETR):
            num_queries, d_model = detr.query_embed.weight.shape
            if num_groups > 1:
                self.extra_queries = nn.Embedding((num_groups - 1) * num_queries, d_model)
        else:
            d_model = detr.dim
        self.dense_head = (
            DenseHead(d_model, detr.num_classes, sigmoid=detr.sigmoid_classes)
            if dense_head
            else None
        )

    def forward(self, images: Tensor, padding_mask: Tensor) -> TrainingOutput:
        if isinstance(self.detr, DeformableDETR):
            return self._deformable(images, padding_mask)
        encoded = self.detr.encode(images, padding_mask)
        queries = self.detr.query_embed.weight
        if self.extra_queries is not None:
            queries = torch.cat((queries, self.extra_queries.weight))
        cls_scores, bbox_preds = self.detr.decode(encoded, queries, self.num_groups)
        dense = None
        if self.dense_head is not None:
            dense_cls, dense_boxes = self.dense_head(encoded.memory)
            centers = cell_centers(padding_mask, encoded.size)
            dense = DenseOutput(dense_cls, dense_boxes, centers, ~encoded.padding_mask)
        return TrainingOutput(cls_scores, bbox_preds, dense)

    def _deformable(self, images: Tensor, padding_mask: Tensor) -> TrainingOutput:
        assert isinstance(self.detr, DeformableDETR) and self.dense_head is not None
        encoded = self.detr.encode(images, padding_mask)
        outputs = self.detr.decode(encoded)
        dense_cls, dense_boxes = self.dense_head(encoded.memory)
        centers = torch.cat(  # (B, S, 2): the levels' cells, in the tokens' order
            [cell_centers(padding_mask, shape) for shape in encoded.level_shapes], 1
        )
        dense = DenseOutput(dense_cls, dense_boxes, centers, ~encoded.padding_mask)
        return TrainingOutput(outputs.cls_logits, outputs.bbox_preds, dense, *outputs[2:])


def cell_centers(padding_mask: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, h * w, 2)``: each feature cell's centre ``(x, y)`` relative to its
    image's unpadded extent (beyond 1 over padding). ``padding_mask (B, H, W)``
    is the pixel mask (True = padding); ``size`` the map's ``(h, w)``."""
    height, width = padding_mask.shape[-2:]
    rows, cols = size
    image_h = (~padding_mask[:, :, 0]).sum(1).clamp(min=1)  # (B,) unpadded height
    image_w = (~padding_mask[:, 0, :]).sum(1).clamp(min=1)
    ys = (torch.arange(rows, device=padding_mask.device) + 0.5) * (height / rows)  # pixels
    xs = (torch.arange(cols, device=padding_mask.device) + 0.5) * (width / cols)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w)
    x = grid_x.reshape(1, -1) / image_w[:, None]
    y = grid_y.reshape(1, -1) / image_h[:, None]
    return torch.stack((x, y), -1)  # (B, S, 2)


def groups_as_layers(outputs: Tensor, num_groups: int) -> Tensor:
    """``(L, B, K * Q, D)`` -> ``(L * K, B, Q, D)``: each (layer, group) becomes one
    "layer" for the batched matcher and loss; index ``l * K + g``."""
    num_layers, batch, grouped, depth = outputs.shape
    queries = grouped // num_groups
    by_group = outputs.view(num_layers, batch, num_groups, queries, depth).transpose(1, 2)
    return by_group.reshape(num_layers * num_groups, batch, queries, depth)


def reference_detr(module: nn.Module) -> Detector:
    """The reference detector inside a trained module: the module itself, or
    the DETR or Deformable DETR a :class:`TrainingDETR` wraps."""
    inner = module.detr if isinstance(module, TrainingDETR) else module
    if not isinstance(inner, (DETR, DeformableDETR)):
        raise TypeError(f"expected a detector or TrainingDETR, got {type(module).__name__}")
    return inner
