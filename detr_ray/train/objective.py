"""What one training step minimises, from the trained module's outputs.

The terms, each on the same batched matcher and normalised by positives
averaged over workers (``reduce_mean``):

- the set loss of every decoder layer (and, with query groups, of every
  group: each (layer, group) is one "layer" of the batched math);
- a two-stage Deformable DETR's encoder proposals, matched to the targets
  with every label set to the first class (the official "binary" targets:
  a proposal is an object or not), logged as ``enc.loss_*``;
- the dense auxiliary head's one-to-many losses, times
  ``train.dense_aux_weight``, logged as ``dense/loss_*``.

Every matching's costs reach the host in one copy
(:meth:`TrainingObjective.costs_to_host`), with whatever the step has to
read with them (its agreed "skip" flag): the step's one device read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from detr_ray.criterion.dense_loss import dense_losses
from detr_ray.criterion.loss_keys import DENSE_TERMS, ENC_TERMS, loss_keys, name_losses
from detr_ray.criterion.matcher import FlatTargets, Matching
from detr_ray.criterion.set_loss import SetCriterion
from detr_ray.model.training_detr import TrainingOutput, groups_as_layers


@dataclass
class HostCosts:
    """The matching costs on the host: the decoder's ``(L * K, T, Q)``, the
    encoder proposals' ``(1, T, S)`` (two stages), and the rider's values."""

    decoder: np.ndarray
    encoder: np.ndarray | None
    rider: np.ndarray


@dataclass
class StepLosses:
    """``losses`` to log (0-dim tensors, keyed as :meth:`TrainingObjective.loss_keys`),
    the ``objective`` to minimise, and the reference group's ``matching``
    (every decoder layer; what ``match_changed`` is measured on)."""

    losses: dict[str, Tensor]
    objective: Tensor
    matching: Matching


class TrainingObjective:
    """The losses of one step (see the module doc).

    Args:
        criterion: the set loss and its matcher.
        num_groups: query groups of the trained module (1: none).
        dense_weight: ``train.dense_aux_weight`` (0: no dense head).
        two_stage: the model returns encoder proposals to train.
    """

    def __init__(
        self, criterion: SetCriterion, num_groups: int, dense_weight: float, two_stage: bool
    ):
        self.criterion = criterion
        self.num_groups, self.dense_weight, self.two_stage = num_groups, dense_weight, two_stage

    def loss_keys(self, num_layers: int) -> list[str]:
        """Every logged loss of a step, in order."""
        keys = loss_keys(num_layers, self.num_groups)
        keys += list(ENC_TERMS) if self.two_stage else []
        return keys + (list(DENSE_TERMS) if self.dense_weight > 0 else [])

    def costs_to_host(
        self, outputs: TrainingOutput, targets: FlatTargets, rider: Tensor
    ) -> HostCosts:
        """Every matching's costs and ``rider``, on the host in one copy."""
        problems = [(*self._decoder_predictions(outputs), targets)]
        if self.two_stage:
            problems.append((*_encoder_predictions(outputs), _binary(targets)))
        costs, rider_host = self.criterion.matcher.many_costs_to_host(
            [(cls.detach(), boxes.detach(), flat) for cls, boxes, flat in problems], rider
        )
        return HostCosts(costs[0], costs[1] if self.two_stage else None, rider_host)

    def __call__(
        self, outputs: TrainingOutput, targets: FlatTargets, host: HostCosts
    ) -> StepLosses:
        """The step's losses for the costs :meth:`costs_to_host` read.

        Raises:
            NonFiniteCostError: a cost is NaN or inf (the matcher names where).
        """
        criterion, matcher = self.criterion, self.criterion.matcher
        device = outputs.cls_scores.device
        cls_scores, bbox_preds = self._decoder_predictions(outputs)
        matching = matcher.solve(host.decoder, targets, device)
        weighted = criterion.layer_losses(cls_scores, bbox_preds, targets, matching)
        losses, objective = name_losses(weighted, self.num_groups)
        if self.two_stage:
            assert host.encoder is not None
            binary = _binary(targets)
            enc_cls, enc_boxes = _encoder_predictions(outputs)
            enc_matching = matcher.solve(host.encoder, binary, device)
            terms = criterion.layer_losses(enc_cls, enc_boxes, binary, enc_matching)[0]
            losses.update(zip(ENC_TERMS, terms.unbind()))
            objective = objective + terms.sum()
        if outputs.dense is not None:
            dense = outputs.dense
            terms = dense_losses(
                criterion, dense.cls_logits, dense.boxes_cxcywh, dense.centers, dense.valid, targets
            )
            terms = terms * self.dense_weight
            losses.update(zip(DENSE_TERMS, terms.unbind()))
            objective = objective + terms.sum()
        reference = matching.layers(slice(None, None, self.num_groups))  # group 0 of each layer
        return StepLosses(losses, objective, reference)

    def _decoder_predictions(self, outputs: TrainingOutput) -> tuple[Tensor, Tensor]:
        """``(L * K, B, Q, C)`` and ``(L * K, B, Q, 4)``: each (layer, group) a layer."""
        if self.num_groups == 1:
            return outputs.cls_scores, outputs.bbox_preds
        return (
            groups_as_layers(outputs.cls_scores, self.num_groups),
            groups_as_layers(outputs.bbox_preds, self.num_groups),
        )


def _encoder_predictions(outputs: TrainingOutput) -> tuple[Tensor, Tensor]:
    """The encoder's proposals as one "layer": ``(1, B, S, K)``, ``(1, B, S, 4)``."""
    if outputs.enc_logits is None or outputs.enc_boxes is None:
        raise ValueError("a two-stage objective needs the model's encoder proposals")
    return outputs.enc_logits[None], outputs.enc_boxes[None]


def _binary(targets: FlatTargets) -> FlatTargets:
    """The same targets, every label the first class (object or not)."""
    return replace(targets, labels=torch.zeros_like(targets.labels))
