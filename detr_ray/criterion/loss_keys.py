"""The names of the loss terms, as the reference writes them, for every decoder layer.

The last decoder layer's terms are ``loss_cls``, ``loss_bbox``, ``loss_iou``;
layer ``i < L - 1`` has ``d{i}.loss_cls`` ... ; ``loss`` is their sum. With
query groups (Group DETR) the reference group keeps these names and the
other groups' mean is ``groups/<name>``. The other parts of a training
objective have their own three terms: a two-stage Deformable DETR's encoder
proposals ``enc.loss_cls`` ... (the official ``*_enc``), the dense auxiliary
head's ``dense/loss_cls`` ... .
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_TERMS = ("loss_cls", "loss_bbox", "loss_iou")
GROUPS_PREFIX = "groups/"
ENC_TERMS = tuple(f"enc.{term}" for term in LOSS_TERMS)
DENSE_TERMS = tuple(f"dense/{term}" for term in LOSS_TERMS)


def loss_keys(num_layers: int, num_groups: int = 1) -> list[str]:
    """The keys of :func:`name_losses`' dict, in order: the last layer's terms,
    the earlier layers', ``loss``; then the extra groups' under ``groups/``."""
    keys = list(LOSS_TERMS)
    for layer in range(num_layers - 1):
        keys += [f"d{layer}.{term}" for term in LOSS_TERMS]
    keys.append("loss")
    return keys + ([GROUPS_PREFIX + k for k in keys] if num_groups > 1 else [])


def keys_by_term(num_layers: int) -> dict[str, list[str]]:
    """Each term's key in every decoder layer, layer 0 first (the last is the bare term)."""
    return {
        term: [f"d{layer}.{term}" for layer in range(num_layers - 1)] + [term]
        for term in LOSS_TERMS
    }


def name_losses(weighted: Tensor, num_groups: int = 1) -> tuple[dict[str, Tensor], Tensor]:
    """The losses to log and the objective to minimise.

    Args:
        weighted: ``(L * K, 3)`` weighted terms of ``K`` query groups, index
            ``l * K + g`` (see :func:`detr_ray.model.training_detr.groups_as_layers`);
            ``(L, 3)`` for the reference DETR alone.

    Returns:
        ``(losses, objective)``: ``losses`` keyed as :func:`loss_keys`
        (0-dim tensors); the objective is the sum over every layer and group
        (Group DETR sums the groups' losses), which is ``losses["loss"]`` for
        one group.
    """
    if num_groups == 1:
        losses = _by_layer(weighted)
        return losses, losses["loss"]
    per_group = weighted.view(-1, num_groups, 3)  # (L, K, 3)
    losses = _by_layer(per_group[:, 0])
    extra = _by_layer(per_group[:, 1:].mean(1))
    losses.update({GROUPS_PREFIX + name: value for name, value in extra.items()})
    return losses, weighted.sum()


def _by_layer(weighted: Tensor) -> dict[str, Tensor]:
    """``(L, 3)`` -> one group's keys of :func:`loss_keys`, ``loss`` their sum."""
    keys = loss_keys(weighted.shape[0])
    per_layer = torch.cat((weighted[-1], weighted[:-1].reshape(-1)))  # last layer first
    losses = dict(zip(keys[:-1], per_layer.unbind()))
    losses["loss"] = weighted.sum()
    return losses
