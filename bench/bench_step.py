"""One training step (forward, loss, backward, clip, AdamW): detr_ray vs HF transformers.

    python bench/bench_step.py [--steps 5] [--rounds 2] [--configs small,r50,...]

Configurations:
- ``r50``:   the official detr_r50, batch 2, 512 x 512, 91 classes;
- ``small``: the CPU preset detr_r18_small, batch 8, 128 x 128, 3 classes;
- ``deformable_r50``: the official deformable_detr_r50, batch 2, 512 x 512, 91 classes;
- ``deformable_small``: the CPU preset deformable_detr_r18_small, batch 8,
  128 x 128, 3 classes (``deformable_small_refine``: with box refinement).

HF transformers' ``DetrForObjectDetection`` / ``DeformableDetrForObjectDetection``
(the ``bench`` extra) is built in the same configuration by
``bench/hf_twins.py`` (its own ResNet, no timm, no downloads; auxiliary losses
on, the official dropout sites, same loss weights and matching costs; the
pure-PyTorch deformable attention). HF's own-ResNet path freezes the *whole*
backbone, so ``detr_ray_frozen`` (``trainable_backbone_stages=0``) is the
like-for-like comparison; ``detr_ray`` trains layer2-4 as the official
repositories do. detr-ray's step is the engine's: the batched matcher with
one device read, every loss of :class:`~detr_ray.train.objective.TrainingObjective`.
Each (implementation, configuration) runs in its own subprocess so peak memory
(max RSS) is its own; the runs alternate, ``--rounds`` times, and the script
prints the median images/s and the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # channels_last: what detr-ray's trainer uses for this model (train.channels_last)
    "r50": dict(preset="detr_r50", batch=2, size=512, num_classes=91, channels_last=True),
    "small": dict(preset="detr_r18_small", batch=8, size=128, num_classes=3, channels_last=False),
    "deformable_r50": dict(
        preset="deformable_detr_r50", batch=2, size=512, num_classes=91, channels_last=True
    ),
    "deformable_small": dict(
        preset="deformable_detr_r18_small",
        batch=8,
        size=128,
        num_classes=3,
        channels_last=False,
    ),
    "deformable_small_refine": dict(
        preset="deformable_detr_r18_small",
        batch=8,
        size=128,
        num_classes=3,
        channels_last=False,
        with_box_refine=True,
    ),
}
TARGETS_PER_IMAGE = 5


def make_batch(batch, size, num_classes, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    targets = []
    for _ in range(batch):
        xy = torch.rand(TARGETS_PER_IMAGE, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(TARGETS_PER_IMAGE, 2, generator=g) * 0.2 + 0.05
        targets.append(
            {
                "labels": torch.randint(0, num_classes, (TARGETS_PER_IMAGE,), generator=g),
                "boxes": torch.cat([xy, wh], 1),
            }
        )
    return images, mask, targets


def adamw(model):
    """The same optimiser for every implementation (fused where torch has it)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)


def model_config(config, trainable_backbone_stages):
    """The benchmark's ModelConfig (the official dropout, frozen batch norms:
    the architecture HF builds)."""
    from detr_ray.config.model import preset_config

    extra = {"with_box_refine": True} if config.get("with_box_refine") else {}
    return preset_config(
        config["preset"],
        num_classes=config["num_classes"],
        trainable_backbone_stages=trainable_backbone_stages,
        backbone_norm="frozen",
        dropout=0.1,
        **extra,
    )


def detr_ray_step_fn(config, trainable_backbone_stages=3):
    import torch

    from detr_ray.config import LossConfig, MatcherConfig
    from detr_ray.criterion.build import build_criterion
    from detr_ray.criterion.matcher import FlatTargets
    from detr_ray.model.build import build_model
    from detr_ray.model.training_detr import as_training_output
    from detr_ray.train.objective import TrainingObjective

    settings = model_config(config, trainable_backbone_stages)
    model = build_model(settings).train()
    cls_cost = 2.0 if settings.deformable else 1.0
    criterion = build_criterion(
        settings,
        MatcherConfig(cls_cost=cls_cost, bbox_cost_format="cxcywh"),
        LossConfig(cls_weight=cls_cost),
        config["num_classes"],
    )
    objective = TrainingObjective(criterion, 1, 0.0, two_stage=settings.two_stage)
    optimizer = adamw(model)
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    def step(images, mask, targets):
        images = images.contiguous(memory_format=memory_format)
        outputs = as_training_output(model(images, mask))
        flat = FlatTargets.from_list(targets)
        host = objective.costs_to_host(outputs, flat, rider=torch.zeros(2))
        losses = objective(outputs, flat, host)
        optimizer.zero_grad()
        losses.objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return step


def hf_step_fn(config):
    import torch
    from hf_twins import hf_twin

    model = hf_twin(model_config(config, 0), config["num_classes"])
    optimizer = adamw(model)

    def step(images, mask, targets):
        labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
        out = model(pixel_values=images, pixel_mask=(~mask).long(), labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return step


def run_one(impl: str, config_name: str, steps: int) -> dict:
    """In a fresh process: warm up, then time ``steps`` training steps."""
    import torch

    config = CONFIGS[config_name]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if impl == "hf":
        step = hf_step_fn(config)
    else:
        step = detr_ray_step_fn(config, 0 if impl == "detr_ray_frozen" else 3)
    batch = make_batch(config["batch"], config["size"], config["num_classes"], seed=0)
    for _ in range(2):
        step(*batch)
    start = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "images_per_s": steps * config["batch"] / elapsed,
        "peak_rss_mb": peak,
        "peak_increase_mb": peak - rss_before,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default="small,r50")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(*args.child, steps=args.steps)))
        return
    try:
        import transformers  # noqa: F401

        impls = ["detr_ray", "detr_ray_frozen", "hf"]
    except ImportError:
        impls = ["detr_ray", "detr_ray_frozen"]
        print("transformers not installed: detr_ray only (pip install -e '.[bench]')")
    print(f"{'config':<24} {'impl':<16} {'images/s':>9} {'peak RSS MB':>12} {'+MB':>7}")
    for config_name in args.configs.split(","):
        runs = {impl: [] for impl in impls}
        for round_index in range(args.rounds):
            order = impls if round_index % 2 == 0 else impls[::-1]
            for impl in order:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--steps",
                        str(args.steps),
                        "--child",
                        impl,
                        config_name,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
        speed = {}
        for impl in impls:
            speed[impl] = statistics.median(r["images_per_s"] for r in runs[impl])
            peak = max(r["peak_rss_mb"] for r in runs[impl])
            increase = max(r["peak_increase_mb"] for r in runs[impl])
            print(
                f"{config_name:<24} {impl:<16} {speed[impl]:>9.2f} {peak:>12.0f} {increase:>7.0f}"
            )
        if "hf" in speed:
            ratio = speed["detr_ray_frozen"] / speed["hf"]
            print(
                f"{config_name:<24} speed, same trainable parameters: detr_ray / hf = {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
