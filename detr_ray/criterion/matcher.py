"""Hungarian matching of DETR's queries to ground-truth boxes.

Notation: ``L`` decoder layers, ``B`` images, ``Q`` queries, ``K`` object
classes (logits have ``K + 1`` channels, background last), ``G_b`` targets in
image ``b`` and ``T = sum_b G_b`` targets in the batch.

One call matches every decoder layer of every image. The costs of all
``(layer, target, query)`` triples that can be matched (a target only meets
the queries of its own image) are computed in one batched pass, copied to the
host once, and each image's ``(G_b, Q)`` block per layer goes to
``scipy.optimize.linear_sum_assignment``. Nothing is computed for the
cross-image pairs that a ``(B * Q, T)`` cost matrix would hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detr_ray.ops.boxes import cxcywh_to_xyxy, giou

BOX_COST_FORMATS = ("xyxy", "cxcywh")
CLS_COST_KINDS = ("softmax", "focal")  # DETR's K + 1 softmax, Deformable DETR's K sigmoids


@dataclass(frozen=True)
class FlatTargets:
    """The targets of a batch, concatenated over images.

    labels        (T,)   int64 class index in ``[0, K)``
    boxes_cxcywh  (T, 4) normalised by the image's own unpadded size
    image_idx     (T,)   int64 image of each target
    counts        ``G_b`` per image, as Python ints (known on the host)
    """

    labels: Tensor
    boxes_cxcywh: Tensor
    image_idx: Tensor
    counts: tuple[int, ...]

    @classmethod
    def from_list(cls, targets: Sequence[Mapping[str, Tensor]], device: torch.device | None = None):
        """Concatenate per-image ``{"labels": (G,), "boxes": (G, 4) cxcywh}`` dicts."""
        counts = tuple(int(t["labels"].shape[0]) for t in targets)
        for b, t in enumerate(targets):
            if t["boxes"].shape != (counts[b], 4):
                raise ValueError(
                    f"target {b}: boxes must have shape ({counts[b]}, 4) to match its "
                    f"{counts[b]} labels, got {tuple(t['boxes'].shape)}"
                )
        if device is None:
            device = targets[0]["labels"].device if targets else torch.device("cpu")
        if sum(counts) == 0:
            labels = torch.zeros(0, dtype=torch.int64, device=device)
            boxes = torch.zeros(0, 4, device=device)
        else:
            labels = torch.cat([t["labels"] for t in targets]).to(device, torch.int64)
            boxes = torch.cat([t["boxes"] for t in targets]).to(device)
        image_idx = torch.repeat_interleave(
            torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64)
        ).to(device)
        return cls(labels, boxes, image_idx, counts)

    @property
    def num_images(self) -> int:
        return len(self.counts)


@dataclass(frozen=True)
class Matching:
    """Matched (query, target) pairs of every decoder layer and image.

    Each image matches ``min(Q, G_b)`` pairs in every layer, so every layer has
    the same number ``P = sum_b min(Q, G_b)`` of pairs (= positives).

    image_idx   (P,)    image of each pair (the same for every layer)
    query_idx   (L, P)  matched query within that image
    target_idx  (L, P)  matched target, an index into the batch's concatenated targets

    Within a layer, an image's pairs are contiguous and in ascending target
    order. Queries that appear in no pair are background.
    """

    image_idx: Tensor
    query_idx: Tensor
    target_idx: Tensor
    counts: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        return self.query_idx.shape[0]

    @property
    def num_pairs(self) -> int:
        return self.query_idx.shape[1]

    def layers(self, which: slice) -> Matching:
        """The matching of some layers only (``slice(None, None, K)``: group 0 of
        each layer when ``K`` query groups are matched as layers)."""
        return Matching(self.image_idx, self.query_idx[which], self.target_idx[which], self.counts)

    def for_image(self, layer: int, image: int) -> tuple[Tensor, Tensor]:
        """``(query_idx, target_idx)`` of one layer and image; targets local to the image."""
        in_image = self.image_idx == image
        offset = sum(self.counts[:image])
        return self.query_idx[layer, in_image], self.target_idx[layer, in_image] - offset


class NonFiniteCostError(FloatingPointError):
    """The matching cost holds NaN or inf: the model's predictions diverged."""


class HungarianMatcher:
    """One-to-one matching of queries to targets by the reference's weighted cost.

    ``cost = cls_cost * C_cls + bbox_cost * L1 + iou_cost * -GIoU``

    - ``cls_cost_kind="softmax"`` (DETR): ``C_cls = -softmax(logits)[label]``,
      ``-p`` rather than the NLL: it approximates ``1 - p``, and the constant
      does not change the matching; the logits have ``K + 1`` channels;
    - ``cls_cost_kind="focal"`` (Deformable DETR): ``K`` sigmoid logits and
      ``C_cls = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p))``
      at the label: the focal loss of calling the query that class, minus that
      of calling it not that class;
    - the L1 term is on normalised boxes, in ``xyxy`` (mmdetection, the
      reference) or ``cxcywh`` (official DETR) as ``bbox_cost_format`` says;
    - GIoU is scale invariant per axis, so computing it on normalised boxes
      equals the reference's absolute-pixel GIoU.

    The weights have no defaults here: the experiment config
    (:class:`detr_ray.config.MatcherConfig`) holds the reference's values.
    """

    def __init__(
        self,
        *,
        cls_cost: float,
        bbox_cost: float,
        iou_cost: float,
        bbox_cost_format: str,
        cls_cost_kind: str = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        if cls_cost_kind not in CLS_COST_KINDS:
            raise ValueError(
                f"cls_cost_kind must be one of {CLS_COST_KINDS}, got {cls_cost_kind!r}"
            )
        if bbox_cost_format not in BOX_COST_FORMATS:
            raise ValueError(
                f"bbox_cost_format must be one of {BOX_COST_FORMATS}, got {bbox_cost_format!r}"
            )
        costs = {"cls_cost": cls_cost, "bbox_cost": bbox_cost, "iou_cost": iou_cost}
        for name, value in costs.items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.cls_cost = float(cls_cost)
        self.bbox_cost = float(bbox_cost)
        self.iou_cost = float(iou_cost)
        self.bbox_cost_format = bbox_cost_format
        self.cls_cost_kind = cls_cost_kind
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)

    def __repr__(self) -> str:
        return (
            f"HungarianMatcher(cls_cost={self.cls_cost}, bbox_cost={self.bbox_cost}, "
            f"iou_cost={self.iou_cost}, bbox_cost_format={self.bbox_cost_format!r}, "
            f"cls_cost_kind={self.cls_cost_kind!r})"
        )

    def __call__(
        self,
        cls_scores: Tensor,
        bbox_preds: Tensor,
        targets: Sequence[Mapping[str, Tensor]] | FlatTargets,
    ) -> Matching:
        """Match every layer and image.

        Args:
            cls_scores: ``(L, B, Q, K + 1)`` logits, background last.
            bbox_preds: ``(L, B, Q, 4)`` normalised cxcywh.
            targets: ``B`` dicts with ``labels (G_b,)`` and ``boxes (G_b, 4)``
                normalised cxcywh, or their :class:`FlatTargets`.

        Returns:
            a :class:`Matching`. An image without targets has no pairs (all its
            queries are background); with ``G_b > Q`` only ``Q`` targets match.

        Raises:
            NonFiniteCostError: a cost is NaN or inf; names the layer and image.
        """
        flat = (
            targets
            if isinstance(targets, FlatTargets)
            else FlatTargets.from_list(targets, device=cls_scores.device)
        )
        cost_host, _ = self.costs_to_host(cls_scores, bbox_preds, flat)
        return self.solve(cost_host, flat, cls_scores.device)

    def costs_to_host(
        self,
        cls_scores: Tensor,
        bbox_preds: Tensor,
        targets: FlatTargets,
        rider: Tensor | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The costs of every layer, float64 on the host, in one device-to-host copy.

        Args:
            cls_scores, bbox_preds, targets: as :meth:`__call__`.
            rider: a few more numbers (any shape, same device) that travel in the
                same copy, e.g. the training step's agreed "skip this step" flag.

        Returns:
            ``(L, T, Q)`` costs (see :meth:`cost`; NaN/inf are not checked here)
            and the rider's values, flattened, as float64.
        """
        (cost,), rider_host = self.many_costs_to_host([(cls_scores, bbox_preds, targets)], rider)
        return cost, rider_host

    def many_costs_to_host(
        self,
        problems: Sequence[tuple[Tensor, Tensor, FlatTargets]],
        rider: Tensor | None = None,
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """:meth:`costs_to_host` for several matchings at once (e.g. the decoder's
        layers and a two-stage encoder's proposals), still in one copy.

        Returns:
            each problem's ``(L, T, Q)`` host costs, in order, and the rider's values.
        """
        parts, shapes = [], []
        for cls_scores, bbox_preds, targets in problems:
            num_layers, _, num_queries = _check_shapes(cls_scores, bbox_preds, targets)
            shapes.append((num_layers, sum(targets.counts), num_queries))
            if sum(targets.counts):
                parts.append(self.cost(cls_scores, bbox_preds, targets).reshape(-1))
        dtype = parts[0].dtype if parts else torch.float32
        if rider is not None:
            parts.append(rider.detach().reshape(-1).to(dtype))
        # The single device-to-host copy; scipy is fastest on contiguous float64.
        host = torch.cat(parts).to("cpu", torch.float64).numpy() if parts else np.zeros(0)
        costs, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            costs.append(host[start : start + size].reshape(shape))
            start += size
        return costs, host[start:]

    def solve(self, cost_host: np.ndarray, targets: FlatTargets, device: torch.device) -> Matching:
        """The optimal :class:`Matching` for host costs from :meth:`costs_to_host`.

        Raises:
            NonFiniteCostError: a cost is NaN or inf; names the layer and image.
        """
        num_layers = cost_host.shape[0]
        query_idx, target_idx, image_idx = solve_assignments(cost_host, targets.counts)
        # One host-to-device copy for all indices.
        packed = torch.from_numpy(np.concatenate((query_idx, target_idx, image_idx[None]))).to(
            device
        )
        return Matching(
            image_idx=packed[-1],
            query_idx=packed[:num_layers],
            target_idx=packed[num_layers:-1],
            counts=targets.counts,
        )

    @torch.no_grad()
    def cost(self, cls_scores: Tensor, bbox_preds: Tensor, targets: FlatTargets) -> Tensor:
        """Weighted matching cost of each target against each query of its own image.

        Returns ``(L, T, Q)``: ``cost[l, t, q]`` pairs target ``t`` with query
        ``q`` of image ``targets.image_idx[t]`` in decoder layer ``l``.
        """
        num_layers, num_images, num_queries, num_logits = cls_scores.shape
        img = targets.image_idx
        dtype = torch.promote_types(cls_scores.dtype, torch.float32)  # fp16/bf16 -> fp32
        # The gathers below are index_select on flat views: several times faster
        # than advanced indexing of strided tensors.
        queries = torch.arange(num_queries, device=img.device)
        flat_idx = (img[:, None] * num_queries + queries) * num_logits + targets.labels[:, None]
        if self.cls_cost_kind == "softmax":
            # -p approximates the NLL; the constant 1 of "1 - p" does not change the matching.
            prob = cls_scores.to(dtype).softmax(-1)  # (L, B, Q, K+1)
            cost_cls = -prob.view(num_layers, -1).index_select(1, flat_idx.view(-1))
        else:  # the sigmoid of the label's logit only: gather first, then the focal terms
            logit = cls_scores.to(dtype).reshape(num_layers, -1).index_select(1, flat_idx.view(-1))
            p = logit.sigmoid()
            alpha, gamma = self.focal_alpha, self.focal_gamma
            positive = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
            negative = (1 - alpha) * p**gamma * -(1 - p + 1e-8).log()
            cost_cls = positive - negative
        cost_cls = cost_cls.view(num_layers, -1, num_queries)  # (L, T, Q)

        # Boxes as coordinate planes, (4, L, T, Q) contiguous, so every op below
        # runs on contiguous (L, T, Q) planes; movedim gives the (..., 4) view.
        def planes(boxes: Tensor) -> Tensor:  # (L, B, Q, 4) -> (4, L, T, Q)
            return boxes.permute(3, 0, 1, 2).contiguous().index_select(2, img)

        pred_cxcywh = bbox_preds.to(dtype)
        pred_xyxy_planes = planes(cxcywh_to_xyxy(pred_cxcywh))
        target_cxcywh = targets.boxes_cxcywh.to(dtype)
        target_xyxy_planes = cxcywh_to_xyxy(target_cxcywh).T[:, None, :, None]  # (4, 1, T, 1)
        if self.bbox_cost_format == "xyxy":
            cost_l1 = (pred_xyxy_planes - target_xyxy_planes).abs().sum(0)
        else:
            target_planes = target_cxcywh.T[:, None, :, None]
            cost_l1 = (planes(pred_cxcywh) - target_planes).abs().sum(0)
        cost_giou = -giou(pred_xyxy_planes.movedim(0, -1), target_xyxy_planes.movedim(0, -1))
        return self.cls_cost * cost_cls + self.bbox_cost * cost_l1 + self.iou_cost * cost_giou


def solve_assignments(
    cost: np.ndarray, counts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal assignment of each (layer, image) block of a ragged cost array.

    Args:
        cost: ``(L, T, Q)`` float array; rows ``[o_b, o_b + G_b)`` of each layer
            are image ``b``'s targets against its ``Q`` queries.
        counts: ``G_b`` per image, summing to ``T``.

    Returns:
        ``query_idx (L, P)``, ``target_idx (L, P)`` (indices into the ``T``
        targets) and ``image_idx (P,)``, int64, with ``P = sum_b min(Q, G_b)``;
        an image's pairs are contiguous and in ascending target order.

    Raises:
        NonFiniteCostError: naming the first layer and image with a NaN/inf cost.
    """
    num_layers, num_targets, num_queries = cost.shape
    if num_targets != sum(counts):
        raise ValueError(f"cost has {num_targets} target rows, counts sum to {sum(counts)}")
    if not np.isfinite(cost).all():
        _raise_non_finite(cost, counts)
    pairs_per_image = [min(count, num_queries) for count in counts]
    num_pairs = sum(pairs_per_image)
    query_idx = np.empty((num_layers, num_pairs), dtype=np.int64)
    target_idx = np.empty((num_layers, num_pairs), dtype=np.int64)
    image_idx = np.repeat(np.arange(len(counts)), pairs_per_image)
    offset = pair_start = 0
    for count, pairs in zip(counts, pairs_per_image):
        pair_slice = slice(pair_start, pair_start + pairs)
        for layer in range(num_layers if count else 0):
            # Rows = this image's targets, columns = its queries; the rows come
            # back sorted, hence the ascending target order.
            block = cost[layer, offset : offset + count]  # (G_b, Q), contiguous
            target_local, query = linear_sum_assignment(block)
            query_idx[layer, pair_slice] = query
            target_idx[layer, pair_slice] = target_local + offset
        offset += count
        pair_start += pairs
    return query_idx, target_idx, image_idx


def _check_shapes(cls_scores: Tensor, bbox_preds: Tensor, flat: FlatTargets) -> tuple[int, ...]:
    if cls_scores.dim() != 4:
        raise ValueError(f"cls_scores must be (L, B, Q, K+1), got shape {tuple(cls_scores.shape)}")
    num_layers, num_images, num_queries, _ = cls_scores.shape
    if bbox_preds.shape != (num_layers, num_images, num_queries, 4):
        raise ValueError(
            f"bbox_preds must be (L, B, Q, 4) = {(num_layers, num_images, num_queries, 4)}, "
            f"got {tuple(bbox_preds.shape)}"
        )
    if flat.num_images != num_images:
        raise ValueError(f"got {flat.num_images} targets for a batch of {num_images} images")
    return num_layers, num_images, num_queries


def _raise_non_finite(cost: np.ndarray, counts: Sequence[int]) -> None:
    bad_layer, bad_target, _ = np.argwhere(~np.isfinite(cost))[0]
    image = int(np.searchsorted(np.cumsum(counts), bad_target, side="right"))
    raise NonFiniteCostError(
        f"matching cost is not finite in decoder layer {bad_layer}, image {image} of the batch "
        "(NaN or inf in the predicted logits or boxes): the model diverged. Lower the learning "
        "rate, enable gradient clipping, or resume from an earlier checkpoint."
    )


def matching_changes(matching: Matching) -> tuple[Tensor, int]:
    """How often each earlier decoder layer matches a target differently.

    Returns ``changed (L - 1,)``: for every layer ``l < L - 1``, the number of
    targets matched in the last layer whose matched query in layer ``l`` is a
    different one (or none); and the number of targets matched in the last
    layer. ``changed / total`` is the layer's matching instability.
    """
    num_layers, num_pairs = matching.query_idx.shape
    device = matching.query_idx.device
    if num_pairs == 0 or num_layers < 2:
        return torch.zeros(max(num_layers - 1, 0), dtype=torch.int64, device=device), num_pairs
    num_targets = sum(matching.counts)
    # query_of[l, t]: the query matched to target t in layer l, -1 if unmatched
    query_of = torch.full((num_layers, num_targets), -1, dtype=torch.int64, device=device)
    query_of.scatter_(1, matching.target_idx, matching.query_idx)
    matched_last = query_of[-1] >= 0  # (T,)
    differs = (query_of[:-1] != query_of[-1]) & matched_last  # (L-1, T)
    return differs.sum(1), int(matched_last.sum())
