"""Where a Deformable DETR training step spends its time: sampling, matching, losses.

    python bench/bench_step_shares.py [--configs deformable_small,deformable_r50] [--steps 5]

The step is detr-ray's (forward, every loss of the training objective,
backward, clipping, AdamW) on bench_step.py's configurations. Its parts are
timed as they run, forward and backward each:

- ``sampling``: the multi-scale deformable sampling core
  (:func:`~detr_ray.model.deformable.sampling.deformable_sample`), every call
  of every encoder and decoder layer, timed through an autograd function that
  wraps it;
- ``matching``: the matching costs (on the device, one copy to the host) and
  scipy's assignment;
- ``losses``: the objective's losses given the matching, and their backward
  down to the model's outputs;
- ``rest``: everything else (backbone, projections, attention's linear maps,
  feed-forward blocks, heads, their backward, the optimiser).

Prints the median milliseconds of each part and its share of the step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import bench_step as bs
import torch

TIMES: dict[str, float] = defaultdict(float)


def timed_sampling():
    """``deformable_sample`` wrapped so that its forward and backward add to TIMES."""
    from detr_ray.model.deformable import attention, sampling

    original = sampling.deformable_sample

    class Timed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, spatial_shapes, locations, weights, level_shapes):
            start = time.perf_counter()
            leaves = [t.detach().requires_grad_(True) for t in (value, locations, weights)]
            with torch.enable_grad():
                out = original(leaves[0], spatial_shapes, leaves[1], leaves[2], level_shapes)
            ctx.leaves, ctx.out = leaves, out
            TIMES["sampling"] += time.perf_counter() - start
            return out.detach()

        @staticmethod
        def backward(ctx, grad):
            start = time.perf_counter()
            grads = torch.autograd.grad(ctx.out, ctx.leaves, grad)
            TIMES["sampling"] += time.perf_counter() - start
            return grads[0], None, grads[1], grads[2], None

    def sample(value, spatial_shapes, locations, weights, level_shapes=None):
        return Timed.apply(value, spatial_shapes, locations, weights, level_shapes)

    attention.deformable_sample = sample


def step_fn(config):
    from detr_ray.config import LossConfig, MatcherConfig
    from detr_ray.criterion.build import build_criterion
    from detr_ray.criterion.matcher import FlatTargets
    from detr_ray.model.build import build_model
    from detr_ray.model.training_detr import as_training_output
    from detr_ray.train.objective import TrainingObjective

    settings = bs.model_config(config, 3)
    model = build_model(settings).train()
    criterion = build_criterion(
        settings,
        MatcherConfig(cls_cost=2.0, bbox_cost_format="cxcywh"),
        LossConfig(cls_weight=2.0),
        config["num_classes"],
    )
    objective = TrainingObjective(criterion, 1, 0.0, two_stage=settings.two_stage)
    matcher = criterion.matcher
    solve = matcher.solve

    def timed_solve(*args):
        start = time.perf_counter()
        result = solve(*args)
        TIMES["matching"] += time.perf_counter() - start
        return result

    matcher.solve = timed_solve
    optimizer = bs.adamw(model)

    def step(images, mask, targets):
        outputs = as_training_output(model(images, mask))
        leaves = outputs._replace(
            **{
                k: v.detach().requires_grad_(True)
                for k, v in outputs._asdict().items()
                if isinstance(v, torch.Tensor)
            }
        )
        flat = FlatTargets.from_list(targets)
        start = time.perf_counter()
        host = objective.costs_to_host(leaves, flat, rider=torch.zeros(2))
        TIMES["matching"] += time.perf_counter() - start
        start = time.perf_counter()
        solved_before = TIMES["matching"]
        loss = objective(leaves, flat, host).objective
        tensors = [v for v in leaves if isinstance(v, torch.Tensor)]
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        TIMES["losses"] += time.perf_counter() - start - (TIMES["matching"] - solved_before)
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=False) if g is not None]
        optimizer.zero_grad()
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="deformable_small,deformable_r50")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    timed_sampling()
    for name in args.configs.split(","):
        config = bs.CONFIGS[name]
        step = step_fn(config)
        batch = bs.make_batch(config["batch"], config["size"], config["num_classes"], seed=0)
        step(*batch)
        rows: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.steps):
            TIMES.clear()
            start = time.perf_counter()
            step(*batch)
            total = time.perf_counter() - start
            rows["step"].append(total)
            for part in ("sampling", "matching", "losses"):
                rows[part].append(TIMES[part])
            rows["rest"].append(total - sum(TIMES.values()))
        median = {part: statistics.median(values) for part, values in rows.items()}
        shares = ", ".join(
            f"{part} {median[part] * 1000:.1f} ms ({median[part] / median['step']:.1%})"
            for part in ("sampling", "matching", "losses", "rest")
        )
        print(f"{name}: step {median['step'] * 1000:.0f} ms: {shares}", flush=True)


if __name__ == "__main__":
    main()
