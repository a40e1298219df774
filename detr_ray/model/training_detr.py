"""The DETR that training sees: the reference model plus training-only parts.

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
  matched queries.

:class:`TrainingDETR` owns the extra queries and the head; they are never part
of the DETR's own ``state_dict``, so checkpoints, export and evaluation see
the reference model only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detr_ray.model.detr import DETR, MLP


class DenseHead(nn.Module):
    """Class logits ``(B, S, K + 1)`` and normalised cxcywh boxes ``(B, S, 4)`` per token."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.box_head = MLP(d_model, d_model, 4, 3)

    def forward(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        return self.class_head(memory), self.box_head(memory).sigmoid()


class TrainingDETR(nn.Module):
    """``detr`` with ``num_groups - 1`` extra groups of its queries and, with
    ``dense_head``, a :class:`DenseHead` on the encoder's output.

    ``forward(images, padding_mask)`` returns ``cls_scores (L, B, K * Q, K_cls + 1)``
    and ``bbox_preds (L, B, K * Q, 4)`` (group ``g``'s queries are ``g * Q ...
    (g + 1) * Q - 1``), and with the dense head also ``dense_cls (B, S, K_cls + 1)``,
    ``dense_boxes (B, S, 4)`` cxcywh, ``cell_centers (B, S, 2)`` (each token's
    centre as ``(x, y)`` relative to its image's unpadded size) and
    ``cell_valid (B, S)`` (False over padding).
    """

    def __init__(self, detr: DETR, num_groups: int = 1, dense_head: bool = False):
        super().__init__()
        if num_groups < 1 or (num_groups == 1 and not dense_head):
            raise ValueError("a TrainingDETR adds query groups (>= 2), a dense head, or both")
        self.detr = detr
        self.num_groups = num_groups
        num_queries, d_model = detr.query_embed.weight.shape
        self.extra_queries = (
            nn.Embedding((num_groups - 1) * num_queries, d_model) if num_groups > 1 else None
        )
        self.dense_head = DenseHead(d_model, detr.num_classes) if dense_head else None

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, ...]:
        encoded = self.detr.encode(images, padding_mask)
        queries = self.detr.query_embed.weight
        if self.extra_queries is not None:
            queries = torch.cat((queries, self.extra_queries.weight))
        cls_scores, bbox_preds = self.detr.decode(encoded, queries, self.num_groups)
        if self.dense_head is None:
            return cls_scores, bbox_preds
        dense_cls, dense_boxes = self.dense_head(encoded.memory)
        centers = cell_centers(padding_mask, encoded.size)
        return cls_scores, bbox_preds, dense_cls, dense_boxes, centers, ~encoded.padding_mask


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


def reference_detr(module: nn.Module) -> DETR:
    """The reference DETR inside a trained module: the module itself, or the
    DETR a :class:`TrainingDETR` wraps."""
    inner = module.detr if isinstance(module, TrainingDETR) else module
    if not isinstance(inner, DETR):
        raise TypeError(f"expected a DETR or TrainingDETR, got {type(module).__name__}")
    return inner
