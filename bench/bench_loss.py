"""Matching + set loss, forward and backward: detr_ray against two baselines.

    python bench/bench_loss.py [--reps 20] [--configs 2x5,8x20,32x50]

L = 6 decoder layers, Q = 100 queries, 91 classes (92 logits), B images with
G targets each. Every implementation runs in the same process on the same
inputs, interleaved, and the script prints median milliseconds and the
speed-up of detr_ray over each baseline:

- ``loop``: the reference's structure (mmdetection 2.11 DETRHead): for every
  decoder layer, for every image, build the (Q, G) cost, copy it to the host,
  solve; then per layer gather targets and compute the three losses.
- ``hf``: HF transformers' DETR loss (``HungarianMatcher`` + ``ImageLoss``
  with auxiliary outputs), when ``transformers`` is installed (``bench`` extra).
- ``lapx``: detr_ray with the Hungarian solves done by ``lapx``'s
  ``lapjvx_batch`` (all decoder layers of an image in one call) instead of
  scipy's ``linear_sum_assignment``, when ``lapx`` is installed. Its matching
  must be identical to scipy's (checked on every config before timing).

Before timing, each baseline's total loss is checked against detr_ray's.
Crowded scenes (COCO images reach 100+ objects): ``--configs 2x50,2x100,2x200``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from detr_ray.config import LossConfig, MatcherConfig, ModelConfig
from detr_ray.criterion.build import build_criterion
from detr_ray.criterion.matcher import FlatTargets, Matching, solve_assignments

L, Q, K = 6, 100, 91
COSTS = dict(cls=1.0, bbox=5.0, iou=2.0)
BG = 0.1


def make_inputs(batch, per_image, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, batch, Q, K + 1, generator=g)
    boxes = torch.cat(
        [
            torch.rand(L, batch, Q, 2, generator=g) * 0.8 + 0.1,
            torch.rand(L, batch, Q, 2, generator=g) * 0.3 + 0.02,
        ],
        -1,
    )
    targets = []
    for _ in range(batch):
        xy = torch.rand(per_image, 2, generator=g) * 0.7 + 0.15
        wh = torch.rand(per_image, 2, generator=g) * 0.25 + 0.02
        targets.append(
            {
                "labels": torch.randint(0, K, (per_image,), generator=g),
                "boxes": torch.cat([xy, wh], 1),
            }
        )
    return logits, boxes, targets


# ---------------------------------------------------------------- reference-style loop
def _xyxy(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _giou_matrix(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area_a[:, None] + area_b[None] - inter).clamp(min=1e-7)
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh_c = (rb_c - lt_c).clamp(min=0)
    enclose = (wh_c[..., 0] * wh_c[..., 1]).clamp(min=1e-7)
    return inter / union - (enclose - union) / enclose


def _giou_aligned(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (area_a + area_b - inter).clamp(min=1e-7)
    wh_c = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enclose = (wh_c[:, 0] * wh_c[:, 1]).clamp(min=1e-7)
    return inter / union - (enclose - union) / enclose


def loop_loss(logits, boxes, targets):
    """Per layer, per image: assign, then loss_single (mmdetection's structure)."""
    total = 0.0
    class_weight = torch.ones(K + 1)
    class_weight[K] = BG
    for layer in range(logits.shape[0]):
        cls_l, box_l = logits[layer], boxes[layer]
        labels_list, pred_list, tgt_list = [], [], []
        num_pos = 0
        for i, t in enumerate(targets):
            with torch.no_grad():
                prob = cls_l[i].softmax(-1)
                cost = (
                    -prob[:, t["labels"]] * COSTS["cls"]
                    + torch.cdist(_xyxy(box_l[i]), _xyxy(t["boxes"]), p=1) * COSTS["bbox"]
                    - _giou_matrix(_xyxy(box_l[i]), _xyxy(t["boxes"])) * COSTS["iou"]
                )
            rows, cols = linear_sum_assignment(cost.cpu())
            rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
            labels = torch.full((Q,), K, dtype=torch.long)
            labels[rows] = t["labels"][cols]
            labels_list.append(labels)
            pred_list.append(box_l[i][rows])
            tgt_list.append(t["boxes"][cols])
            num_pos += len(rows)
        labels = torch.cat(labels_list)
        num_neg = labels.numel() - num_pos
        ce = F.cross_entropy(cls_l.reshape(-1, K + 1), labels, weight=class_weight, reduction="sum")
        loss_cls = ce / max(num_pos + BG * num_neg, 1)
        pred, tgt = torch.cat(pred_list), torch.cat(tgt_list)
        norm = max(num_pos, 1)
        loss_bbox = (pred - tgt).abs().sum() / norm
        loss_iou = (1 - _giou_aligned(_xyxy(pred), _xyxy(tgt))).sum() / norm
        total = total + loss_cls * 1.0 + loss_bbox * 5.0 + loss_iou * 2.0
    return total


# ---------------------------------------------------------------- HF transformers
def make_hf_loss():
    try:
        from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher
        from transformers.loss.loss_for_object_detection import ImageLoss
    except ImportError:
        return None
    criterion = ImageLoss(
        HFMatcher(class_cost=1, bbox_cost=5, giou_cost=2),
        num_classes=K,
        eos_coef=BG,
        losses=["labels", "boxes", "cardinality"],
    )
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    for i in range(L - 1):
        weights.update({f"{k}_{i}": v for k, v in list(weights.items())[:3]})

    def hf_loss(logits, boxes, targets):
        outputs = {
            "logits": logits[-1],
            "pred_boxes": boxes[-1],
            "auxiliary_outputs": [
                {"logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ],
        }
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        loss_dict = criterion(outputs, labels)
        return sum(loss_dict[k] * w for k, w in weights.items())

    return hf_loss


# ---------------------------------------------------------------- lapx's batch solver
def lapx_solve(cost, counts):
    """:func:`detr_ray.criterion.matcher.solve_assignments` through ``lap.lapjvx_batch``."""
    import lap

    num_layers, _, num_queries = cost.shape
    queries, targets, images = [], [], []
    offset = 0
    for image, count in enumerate(counts):
        if count:
            block = cost[:, offset : offset + count]  # (L, G_b, Q)
            _, rows, cols = lap.lapjvx_batch(block, extend_cost=True, n_threads=1)
            per_layer_q, per_layer_t = [], []
            for r, c in zip(rows, cols):
                keep = (r < count) & (c < num_queries)  # drop the padding's pairs
                order = np.argsort(r[keep])
                per_layer_t.append(r[keep][order] + offset)
                per_layer_q.append(c[keep][order])
            queries.append(np.stack(per_layer_q))
            targets.append(np.stack(per_layer_t))
            images.append(np.full(per_layer_q[0].shape[0], image))
        offset += count
    if not queries:
        empty = np.zeros((num_layers, 0), dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.int64)
    return (np.concatenate(queries, 1).astype(np.int64),
            np.concatenate(targets, 1).astype(np.int64),
            np.concatenate(images).astype(np.int64))  # fmt: skip


def make_lapx_loss(criterion):
    try:
        import lap  # noqa: F401
    except ImportError:
        return None

    def lapx_loss(logits, boxes, targets):
        flat = FlatTargets.from_list(targets)
        cost_host, _ = criterion.matcher.costs_to_host(logits.detach(), boxes.detach(), flat)
        query_idx, target_idx, image_idx = lapx_solve(cost_host, flat.counts)
        matching = Matching(
            torch.from_numpy(image_idx), torch.from_numpy(query_idx),
            torch.from_numpy(target_idx), flat.counts,
        )  # fmt: skip
        return criterion.losses(logits, boxes, flat, matching)["loss"]

    return lapx_loss


def check_same_matching(criterion, logits, boxes, targets):
    flat = FlatTargets.from_list(targets)
    cost_host, _ = criterion.matcher.costs_to_host(logits, boxes, flat)
    for ours, theirs in zip(
        solve_assignments(cost_host, flat.counts), lapx_solve(cost_host, flat.counts)
    ):
        if not np.array_equal(ours, theirs):
            raise SystemExit("lapx's matching differs from scipy's")


def time_once(fn, logits, boxes, targets):
    logits = logits.clone().requires_grad_(True)
    boxes = boxes.clone().requires_grad_(True)
    start = time.perf_counter()
    fn(logits, boxes, targets).backward()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument(
        "--configs", default="2x5,2x20,8x5,8x20,8x50,32x5,32x20,32x50", help="comma-separated BxG"
    )
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    loss = LossConfig(bg_cls_weight=BG)
    criterion = build_criterion(ModelConfig(), MatcherConfig(), loss, K)
    criterion_cxcywh = build_criterion(
        ModelConfig(), MatcherConfig(bbox_cost_format="cxcywh"), loss, K
    )

    def ours(logits, boxes, targets):
        return criterion(logits, boxes, targets)["loss"]

    impls = {"detr_ray": ours, "loop": loop_loss}
    hf = make_hf_loss()
    if hf is not None:
        impls["hf"] = hf
    lapx = make_lapx_loss(criterion)
    if lapx is not None:
        impls["lapx"] = lapx
    print(
        f"L={L} Q={Q} logits={K + 1}, {torch.get_num_threads()} threads, median of "
        f"{args.reps} (forward + backward, ms)"
    )
    header = f"{'B':>3} {'G':>3} " + " ".join(f"{n:>9}" for n in impls)
    header += " " + " ".join(f"{'x ' + n:>9}" for n in impls if n != "detr_ray")
    print(header)
    for config in args.configs.split(","):
        batch, per_image = (int(v) for v in config.split("x"))
        logits, boxes, targets = make_inputs(batch, per_image)
        # HF matches with the L1 cost on cxcywh (official DETR), the loop on xyxy.
        expected_xyxy = float(ours(logits, boxes, targets))
        expected_cxcywh = float(criterion_cxcywh(logits, boxes, targets)["loss"])
        if lapx is not None:
            check_same_matching(criterion, logits, boxes, targets)
        # More targets than queries: HF normalises by all targets, the reference
        # (and detr_ray) by the matched ones, so the totals differ by design.
        run = {n: fn for n, fn in impls.items() if not (n == "hf" and per_image > Q)}
        for name, fn in run.items():
            value = float(fn(logits, boxes, targets))
            expected = expected_cxcywh if name == "hf" else expected_xyxy
            if abs(value - expected) > 1e-3 * max(1.0, abs(expected)):
                raise SystemExit(f"{name} total loss {value} differs from detr_ray's {expected}")
        times: dict[str, list[float]] = {name: [] for name in run}
        for _ in range(2):  # warm-up
            for fn in run.values():
                time_once(fn, logits, boxes, targets)
        for _ in range(args.reps):  # interleaved, so machine noise hits all alike
            for name, fn in run.items():
                times[name].append(time_once(fn, logits, boxes, targets))
        median = {name: statistics.median(ts) for name, ts in times.items()}
        row = f"{batch:>3} {per_image:>3} " + " ".join(
            f"{median[n]:>9.2f}" if n in median else f"{'-':>9}" for n in impls
        )
        row += " " + " ".join(
            f"{median[n] / median['detr_ray']:>8.1f}x" if n in median else f"{'-':>9}"
            for n in impls
            if n != "detr_ray"
        )
        print(row, flush=True)


if __name__ == "__main__":
    main()
