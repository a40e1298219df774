"""Training-time query groups (Group DETR): more one-to-one supervision per step.

Group DETR (Chen et al., "Group DETR: Fast DETR Training with Group-Wise
One-to-Many Assignment", ICCV 2023) trains ``K`` groups of ``Q`` object
queries at once. Each group is matched one-to-one to the targets on its own,
and self-attention stays within a group, so every group sees exactly what
the reference DETR's queries see; the decoder, heads and backbone get ``K``
times the matched supervision per image. At inference only the first group
is used: that is the reference DETR, unchanged.

:class:`GroupedDETR` wraps a :class:`~detr_ray.model.detr.DETR` for training:
it owns the ``K - 1`` extra groups' query embeddings, which are never part of
the DETR's own ``state_dict`` (checkpoints, export and evaluation see the
reference model only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detr_ray.model.detr import DETR


class GroupedDETR(nn.Module):
    """``detr`` plus ``num_groups - 1`` extra groups of its queries, for training.

    ``forward(images, padding_mask)`` returns ``cls_scores (L, B, K * Q, K_cls + 1)``
    and ``bbox_preds (L, B, K * Q, 4)``: group ``g``'s queries are
    ``g * Q ... (g + 1) * Q - 1``, group 0 being the DETR's own.
    """

    def __init__(self, detr: DETR, num_groups: int):
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"a GroupedDETR has at least 2 query groups, got {num_groups}")
        self.detr = detr
        self.num_groups = num_groups
        num_queries, d_model = detr.query_embed.weight.shape
        self.extra_queries = nn.Embedding((num_groups - 1) * num_queries, d_model)

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        queries = torch.cat((self.detr.query_embed.weight, self.extra_queries.weight))
        return self.detr.forward_queries(images, padding_mask, queries, self.num_groups)


def groups_as_layers(outputs: Tensor, num_groups: int) -> Tensor:
    """``(L, B, K * Q, D)`` -> ``(L * K, B, Q, D)``: each (layer, group) becomes one
    "layer" for the batched matcher and loss; index ``l * K + g``."""
    num_layers, batch, grouped, depth = outputs.shape
    queries = grouped // num_groups
    by_group = outputs.view(num_layers, batch, num_groups, queries, depth).transpose(1, 2)
    return by_group.reshape(num_layers * num_groups, batch, queries, depth)
