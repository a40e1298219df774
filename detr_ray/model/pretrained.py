"""Initialising a model for fine-tuning from pretrained weights (state dicts).

The weights come from any checkpoint :func:`detr_ray.checkpoint.initialise_from`
reads (detr-ray, official, Hugging Face; a torchvision ResNet for the
backbone alone), already in our names. The class heads can keep the rows of
the categories the new dataset shares with the source (matched by category
id: an official COCO checkpoint's row ``i`` is COCO category ``i``), or be
re-initialised; either way DETR's no-object row is kept. Deformable DETR has
a class head per decoder layer (and the two-stage encoder's): each is
treated the same way. A model with another number of queries than the source
(a dataset with more or fewer objects per image) keeps the source's first
query embeddings; any more are the model's own new ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from detr_ray.data.labels import LabelMap
from detr_ray.errors import CheckpointError, ConfigError
from detr_ray.model.deformable.detector import DeformableDETR
from detr_ray.model.detr import DETR

CLASS_HEAD_POLICIES = ("keep", "reinit")
QUERY_EMBEDDINGS = "query_embed.weight"  # (Q, C) in DETR, (Q, 2C) in Deformable DETR


def is_torchvision_resnet(state_dict: Mapping) -> bool:
    return "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict


def load_pretrained_state_dict(
    model: DETR | DeformableDETR,
    state_dict: Mapping[str, Tensor],
    source_labels: LabelMap,
    target_labels: LabelMap,
    class_head: str = "keep",
    source_name: str = "the checkpoint",
) -> None:
    """Load every weight of ``state_dict`` (our key names) into ``model``, in place.

    Args:
        source_labels: the labels of ``state_dict``'s class head.
        target_labels: the labels ``model`` is being trained for.
        class_head: ``"keep"`` the source rows of ``target_labels``'s
            categories, or ``"reinit"`` them (the no-object row is kept).
        source_name: how messages name the source (e.g. its file).

    Raises:
        CheckpointError: the weights do not fit the model, or ``keep`` asks
            for categories the source does not have.
    """
    if class_head not in CLASS_HEAD_POLICIES:
        raise ConfigError(
            f"model.class_head must be one of {list(CLASS_HEAD_POLICIES)}, got {class_head!r}"
        )
    weights = dict(state_dict)
    weights.update(
        _class_head(model, weights, source_labels, target_labels, class_head, source_name)
    )
    weights.update(_queries(model, weights))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    misshaped = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{source_name} does not fit the configured model: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, different shapes {misshaped[:8]}. "
            "Match the model config (preset, d_model, layers, queries) to the checkpoint."
        )
    model.load_state_dict(weights, strict=True)


def _class_head(
    model: DETR | DeformableDETR,
    state_dict: Mapping[str, Tensor],
    source: LabelMap,
    target: LabelMap,
    policy: str,
    source_name: str,
) -> dict[str, Tensor]:
    """The class heads' weights and biases for ``target``'s labels, by ``policy``."""
    if policy == "keep":
        missing = [c for c in target.category_ids if c not in source.category_ids]
        if missing:
            raise CheckpointError(
                f"the class head of {source_name} has no rows for category ids {missing[:10]}; "
                "set model.class_head: reinit to fine-tune to new categories"
            )
    rows = torch.tensor(
        [source.label_of(c) for c in target.category_ids] if policy == "keep" else []
    )
    background = not model.sigmoid_classes  # DETR's last row: no object
    own = model.state_dict()
    heads = sorted({k.rsplit(".", 1)[0] for k in own if _is_class_head(k)})
    out = {}
    for head in heads:
        for kind in ("weight", "bias"):
            key = f"{head}.{kind}"
            if key not in state_dict:
                continue  # the shape check of the caller names it
            theirs = state_dict[key]  # (K_source [+ 1], ...)
            if policy == "keep":
                new = theirs[rows]
            else:
                new = own[key][: len(target.category_ids)]
            out[key] = torch.cat((new, theirs[-1:])) if background else new
    return out


def _queries(model: DETR | DeformableDETR, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The query embeddings ``(Q, ...)`` for ``model``'s ``Q`` queries: the source's
    first ``min(Q, Q_source)`` rows, then the model's own for the rest. Nothing
    when the shapes agree, or differ in more than the count (the caller's check
    names those)."""
    own, theirs = model.state_dict().get(QUERY_EMBEDDINGS), state_dict.get(QUERY_EMBEDDINGS)
    if own is None or theirs is None or len(own) == len(theirs) or own[0].shape != theirs[0].shape:
        return {}
    kept = min(len(own), len(theirs))
    return {QUERY_EMBEDDINGS: torch.cat((theirs[:kept], own[kept:]))}


def _is_class_head(key: str) -> bool:
    """DETR's ``class_head``, Deformable DETR's per-layer ``class_embed.<i>``."""
    return key.startswith(("class_head.", "class_embed."))
