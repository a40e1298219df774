"""DETR's set loss: classification, L1 and GIoU on Hungarian-matched pairs.

Notation as in :mod:`detr_ray.criterion.matcher`. For every decoder layer (all at
once, not in a loop):

- ``loss_cls``: cross-entropy over the ``K + 1`` logits of every query, with
  class weight 1 for objects and ``bg_cls_weight`` for background (unmatched
  queries), summed and divided by ``num_pos + bg_cls_weight * num_neg``.
  With ``cls_loss="focal"`` (Deformable DETR) the ``K`` logits are sigmoids
  with no background channel: the sigmoid focal loss of every query and class
  (target 1 at a matched query's label, 0 elsewhere), summed and divided by
  ``num_total_pos``.
- ``loss_bbox``: L1 between matched normalised cxcywh boxes, summed over the
  four coordinates and the pairs, divided by ``num_total_pos``.
- ``loss_iou``: ``1 - GIoU`` of matched pairs, divided by ``num_total_pos``.

``num_total_pos`` is the number of matched targets averaged over all workers
(``reduce_mean``) and clamped to at least 1; the classification normaliser is
averaged too when ``sync_cls_avg_factor``. Each worker then holds
``its share / global mean``, and DDP's gradient averaging makes N workers
train exactly like one process with the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ray.criterion.loss_keys import name_losses
from detr_ray.criterion.matcher import FlatTargets, HungarianMatcher, Matching
from detr_ray.ops.boxes import cxcywh_to_xyxy, giou
from detr_ray.ops.dist import reduce_mean

CLS_LOSSES = ("ce", "focal")  # DETR's softmax cross-entropy, Deformable DETR's sigmoid focal


class SetCriterion(nn.Module):
    """The DETR set loss of every decoder layer.

    Args:
        num_classes: ``K``, the number of object classes; logits have ``K + 1``
            channels with background last.
        matcher: the :class:`HungarianMatcher` that pairs queries with targets.
        cls_weight, bbox_weight, iou_weight: weights of the three loss terms.
        bg_cls_weight: class weight of background in the cross-entropy
            (``eos_coef`` in the official DETR).
        sync_cls_avg_factor: average the classification normaliser over
            workers, as ``num_total_pos`` always is.
        cls_loss: ``ce`` (DETR: ``K + 1`` logits) or ``focal`` (``K`` sigmoid
            logits; ``bg_cls_weight`` and ``sync_cls_avg_factor`` then unused).
        focal_alpha, focal_gamma: the focal loss's (0.25 and 2 as in RetinaNet).
        check_labels: check on every call that target labels are in ``[0, K)``
            (a clear error instead of an index error, at the cost of one
            device-to-host read). The training engine turns it off: its labels
            come from a label map that it checks once.

    The weights have no defaults here: the experiment config
    (:class:`detr_ray.config.LossConfig`) holds the reference's values.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        cls_weight: float,
        bbox_weight: float,
        iou_weight: float,
        bg_cls_weight: float,
        sync_cls_avg_factor: bool,
        check_labels: bool = True,
        cls_loss: str = "ce",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self.class_weight: Tensor  # (K + 1,) buffer: 1 per object class, bg_cls_weight last
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= bg_cls_weight:
            raise ValueError(f"bg_cls_weight must be >= 0, got {bg_cls_weight}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        self.num_classes = num_classes
        self.cls_loss = cls_loss
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.matcher = matcher
        self.cls_weight = float(cls_weight)
        self.bbox_weight = float(bbox_weight)
        self.iou_weight = float(iou_weight)
        self.bg_cls_weight = float(bg_cls_weight)
        self.sync_cls_avg_factor = sync_cls_avg_factor
        self.check_labels = check_labels
        class_weight = torch.ones(num_classes + 1)  # (K + 1,)
        class_weight[num_classes] = bg_cls_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(
        self,
        cls_scores: Tensor,
        bbox_preds: Tensor,
        targets: Sequence[Mapping[str, Tensor]] | FlatTargets,
    ) -> dict[str, Tensor]:
        """Match, then compute the weighted losses of every decoder layer.

        Args:
            cls_scores: ``(L, B, Q, K + 1)`` logits, background last.
            bbox_preds: ``(L, B, Q, 4)`` normalised cxcywh.
            targets: ``B`` dicts with ``labels (G_b,)`` in ``[0, K)`` and
                ``boxes (G_b, 4)`` normalised cxcywh (or their FlatTargets).

        Returns:
            the weighted losses keyed as
            :func:`~detr_ray.criterion.loss_keys.loss_keys` says, each a
            0-dim tensor, plus ``loss``, their sum.
        """
        flat = (
            targets
            if isinstance(targets, FlatTargets)
            else FlatTargets.from_list(targets, device=cls_scores.device)
        )
        matching = self.matcher(cls_scores.detach(), bbox_preds.detach(), flat)
        return self.losses(cls_scores, bbox_preds, flat, matching)

    def losses(
        self, cls_scores: Tensor, bbox_preds: Tensor, targets: FlatTargets, matching: Matching
    ) -> dict[str, Tensor]:
        """The weighted losses for a given matching (see :meth:`forward`)."""
        return name_losses(self.layer_losses(cls_scores, bbox_preds, targets, matching))[0]

    def layer_losses(
        self, cls_scores: Tensor, bbox_preds: Tensor, targets: FlatTargets, matching: Matching
    ) -> Tensor:
        """``(L, 3)``: each decoder layer's weighted ``loss_cls``, ``loss_bbox``,
        ``loss_iou`` for a given matching (:meth:`losses` names them)."""
        if self.check_labels:
            self._check_labels(targets)
        num_layers, num_images, num_queries, num_logits = cls_scores.shape
        expected = self.num_classes + (1 if self.cls_loss == "ce" else 0)
        if num_logits != expected:
            what = (
                f"num_classes + 1 = {expected} (background last)"
                if self.cls_loss == "ce"
                else f"num_classes = {expected} (cls_loss 'focal': no background logit)"
            )
            raise ValueError(f"cls_scores has {num_logits} logits per query; expected {what}")
        # The loss is computed in at least float32, also under autocast.
        dtype = torch.promote_types(cls_scores.dtype, torch.float32)
        cls_scores, bbox_preds = cls_scores.to(dtype), bbox_preds.to(dtype)
        num_total_pos, cls_avg_factor = self._normalisers(matching, num_images * num_queries, dtype)

        # Index of each matched query in the flattened (L * B * Q) predictions.
        layers = torch.arange(num_layers, device=cls_scores.device)[:, None]  # (L, 1)
        pred_idx = (layers * num_images + matching.image_idx) * num_queries + matching.query_idx
        pred_idx = pred_idx.reshape(-1)  # (L * P,)
        target_idx = matching.target_idx.reshape(-1)  # (L * P,)

        if self.cls_loss == "focal":  # (L,)
            loss_cls = self._focal(cls_scores, targets, pred_idx, target_idx) / num_total_pos
        else:
            loss_cls = self._cross_entropy(cls_scores, targets, pred_idx, target_idx)
            loss_cls = loss_cls / cls_avg_factor

        # Boxes: matched pairs only.
        matched_pred = bbox_preds.reshape(-1, 4).index_select(0, pred_idx)  # (L * P, 4) cxcywh
        matched_pred = matched_pred.view(num_layers, -1, 4)  # (L, P, 4)
        matched_target = targets.boxes_cxcywh.to(dtype).index_select(0, target_idx)
        matched_target = matched_target.view(num_layers, -1, 4)  # (L, P, 4)
        loss_bbox = (matched_pred - matched_target).abs().sum((1, 2)) / num_total_pos  # (L,)
        giou_pairs = giou(cxcywh_to_xyxy(matched_pred), cxcywh_to_xyxy(matched_target))  # (L, P)
        loss_iou = (1 - giou_pairs).sum(1) / num_total_pos  # (L,)

        return torch.stack(
            (self.cls_weight * loss_cls, self.bbox_weight * loss_bbox, self.iou_weight * loss_iou),
            dim=1,
        )  # (L, 3)

    def _cross_entropy(
        self, cls_scores: Tensor, targets: FlatTargets, pred_idx: Tensor, target_idx: Tensor
    ) -> Tensor:
        """``(L,)`` summed weighted cross-entropy: every query, background unless matched."""
        num_layers, num_logits = cls_scores.shape[0], cls_scores.shape[-1]
        target_classes = torch.full(
            (cls_scores[..., 0].numel(),), self.num_classes, device=cls_scores.device
        )
        target_classes[pred_idx] = targets.labels[target_idx]
        cross_entropy = F.cross_entropy(
            cls_scores.reshape(-1, num_logits),
            target_classes,
            weight=self.class_weight.to(cls_scores.dtype),
            reduction="none",
        )  # (L * B * Q,)
        return cross_entropy.view(num_layers, -1).sum(1)

    def _focal(
        self, cls_scores: Tensor, targets: FlatTargets, pred_idx: Tensor, target_idx: Tensor
    ) -> Tensor:
        """``(L,)`` summed sigmoid focal loss over every query and class."""
        num_layers, num_classes = cls_scores.shape[0], cls_scores.shape[-1]
        logits = cls_scores.reshape(-1, num_classes)  # (L * B * Q, K)
        onehot = torch.zeros_like(logits)
        onehot[pred_idx, targets.labels[target_idx]] = 1.0
        focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        return focal.view(num_layers, -1).sum(1)

    def _normalisers(
        self, matching: Matching, num_predictions: int, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """``num_total_pos`` and the classification normaliser, both clamped to >= 1.

        One all-reduce for both: the counts are the same in every layer.
        """
        num_pos = matching.num_pairs
        counts = torch.tensor(
            [num_pos, num_predictions - num_pos], dtype=dtype, device=matching.query_idx.device
        )
        mean_counts = reduce_mean(counts)
        num_total_pos = mean_counts[0].clamp(min=1)
        cls_counts = mean_counts if self.sync_cls_avg_factor else counts
        cls_avg_factor = (cls_counts[0] + self.bg_cls_weight * cls_counts[1]).clamp(min=1)
        return num_total_pos, cls_avg_factor

    def _check_labels(self, targets: FlatTargets) -> None:
        if targets.labels.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(targets.labels))
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"target labels must be in [0, {self.num_classes}) for num_classes="
                f"{self.num_classes}; got labels from {low} to {high}. "
                "Set model.num_classes to the number of categories, or fix the label map."
            )


def sigmoid_focal_loss(logits: Tensor, onehot: Tensor, alpha: float, gamma: float) -> Tensor:
    """Elementwise sigmoid focal loss (Lin et al., 2017) of ``logits`` against
    0/1 ``onehot`` targets of the same shape: ``alpha_t (1 - p_t)^gamma BCE``,
    ``p_t`` the probability given to the right answer."""
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_true = p * onehot + (1 - p) * (1 - onehot)
    alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    return alpha_t * (1 - p_true) ** gamma * bce
