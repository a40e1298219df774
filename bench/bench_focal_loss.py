"""Deformable DETR's matching + focal set loss, forward and backward: detr_ray against HF.

    python bench/bench_focal_loss.py [--reps 20] [--configs 2x5,2x20,8x20]

L = 6 decoder layers, Q = 300 queries, K = 91 sigmoid classes (the official
Deformable DETR), B images with G targets each, costs and weights 2 / 5 / 2.
detr_ray: the batched matcher (one device read) and the focal set loss of
every layer at once (:class:`~detr_ray.train.objective.TrainingObjective`).
HF: transformers' ``DeformableDetrForObjectDetectionLoss`` with auxiliary
outputs (its matcher per layer, its focal loss per layer). Both run in one
process on the same inputs, interleaved; the totals are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from detr_ray.config import LossConfig, MatcherConfig, preset_config
from detr_ray.criterion.build import build_criterion
from detr_ray.criterion.matcher import FlatTargets
from detr_ray.model.training_detr import TrainingOutput
from detr_ray.train.objective import TrainingObjective

L, Q, K = 6, 300, 91
WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def make_inputs(batch, per_image, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, batch, Q, K, generator=g) - 3
    centre = torch.rand(L, batch, Q, 2, generator=g) * 0.8 + 0.1
    size = torch.rand(L, batch, Q, 2, generator=g) * 0.3 + 0.02
    targets = []
    for _ in range(batch):
        xy = torch.rand(per_image, 2, generator=g) * 0.7 + 0.15
        wh = torch.rand(per_image, 2, generator=g) * 0.25 + 0.02
        labels = torch.randint(0, K, (per_image,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([xy, wh], 1)})
    return logits, torch.cat([centre, size], -1), targets


def make_ours():
    model = preset_config("deformable_detr_r50", num_classes=K)
    criterion = build_criterion(
        model,
        MatcherConfig(cls_cost=2.0, bbox_cost_format="cxcywh"),
        LossConfig(cls_weight=2.0),
        K,
    )
    objective = TrainingObjective(criterion, 1, 0.0, two_stage=False)

    def ours(logits, boxes, targets):
        outputs = TrainingOutput(logits, boxes)
        flat = FlatTargets.from_list(targets)
        host = objective.costs_to_host(outputs, flat, rider=torch.zeros(2))
        return objective(outputs, flat, host).objective

    return ours


def make_hf():
    import transformers
    from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss

    config = transformers.DeformableDetrConfig(
        num_labels=K, class_cost=2, bbox_cost=5, giou_cost=2, decoder_layers=L,
        auxiliary_loss=True, bbox_loss_coefficient=5, giou_loss_coefficient=2,
    )  # fmt: skip

    def hf(logits, boxes, targets):
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        _, losses, _ = DeformableDetrForObjectDetectionLoss(
            logits[-1], labels, "cpu", boxes[-1], config, outputs_class=logits, outputs_coord=boxes
        )
        total = 0.0
        for key, value in losses.items():
            base = key.rsplit("_", 1)[0] if key[-1].isdigit() else key
            total = total + WEIGHTS.get(base, 0.0) * value
        return total

    return hf


def time_once(fn, logits, boxes, targets):
    logits = logits.clone().requires_grad_(True)
    boxes = boxes.clone().requires_grad_(True)
    start = time.perf_counter()
    fn(logits, boxes, targets).backward()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--configs", default="2x5,2x20,8x5,8x20,8x50", help="comma-separated BxG")
    args = parser.parse_args()
    impls = {"detr_ray": make_ours(), "hf": make_hf()}
    print(f"L={L} Q={Q} K={K}, {torch.get_num_threads()} threads, median of {args.reps} (ms)")
    print(f"{'B':>3} {'G':>3} {'detr_ray':>9} {'hf':>9} {'x hf':>7}")
    for config in args.configs.split(","):
        batch, per_image = (int(v) for v in config.split("x"))
        inputs = make_inputs(batch, per_image)
        totals = {name: float(fn(*inputs)) for name, fn in impls.items()}
        if abs(totals["hf"] - totals["detr_ray"]) > 1e-3 * max(1.0, abs(totals["detr_ray"])):
            raise SystemExit(f"totals differ: {totals}")
        times: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(2):
            for fn in impls.values():
                time_once(fn, *inputs)
        for _ in range(args.reps):
            for name, fn in impls.items():
                times[name].append(time_once(fn, *inputs))
        median = {name: statistics.median(t) for name, t in times.items()}
        ratio = median["hf"] / median["detr_ray"]
        print(
            f"{batch:>3} {per_image:>3} {median['detr_ray']:>9.2f} {median['hf']:>9.2f} "
            f"{ratio:>6.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
