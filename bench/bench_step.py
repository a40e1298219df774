"""One DETR training step (forward, loss, backward, clip, AdamW): detr_ray vs HF transformers.

    python bench/bench_step.py [--steps 5] [--rounds 2]

Configurations:
- ``r50``:   the official detr_r50, batch 2, 512 x 512, 91 classes;
- ``small``: the CPU preset detr_r18_small, batch 8, 128 x 128, 3 classes.

HF transformers' ``DetrForObjectDetection`` (the ``bench`` extra) is built in
the same configuration (its own ResNet, no timm, no downloads; auxiliary losses
on, the official dropout sites, same loss weights and matching costs). HF's
own-ResNet path freezes the *whole* backbone (its freezing rule looks for
"stage.1", which the HF ResNet's "stages.1" names never contain), so
``detr_ray_frozen`` (``trainable_backbone_stages=0``) is the like-for-like
comparison; ``detr_ray`` trains layer2-4 as the official DETR does.
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


def detr_ray_step_fn(config, trainable_backbone_stages=3):
    import torch

    from detr_ray.config import LossConfig, MatcherConfig
    from detr_ray.criterion.build import build_criterion
    from detr_ray.model.build import build_preset

    model = build_preset(
        config["preset"],
        num_classes=config["num_classes"],
        trainable_backbone_stages=trainable_backbone_stages,
        dropout=0.1,
    ).train()
    criterion = build_criterion(
        MatcherConfig(bbox_cost_format="cxcywh"), LossConfig(), config["num_classes"]
    )
    optimizer = adamw(model)
    memory_format = torch.channels_last if config["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    def step(images, mask, targets):
        images = images.contiguous(memory_format=memory_format)
        losses = criterion(*model(images, mask), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    return step


def hf_step_fn(config):
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    if config["preset"] == "detr_r50":
        backbone = ResNetConfig(
            depths=[3, 4, 6, 3],
            layer_type="bottleneck",
            hidden_sizes=[256, 512, 1024, 2048],
            out_features=["stage4"],
        )
        sizes = dict(
            d_model=256,
            encoder_layers=6,
            decoder_layers=6,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            num_queries=100,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
        )
    else:
        backbone = ResNetConfig(
            depths=[2, 2, 2, 2],
            layer_type="basic",
            hidden_sizes=[64, 128, 256, 512],
            out_features=["stage4"],
        )
        sizes = dict(
            d_model=128,
            encoder_layers=2,
            decoder_layers=2,
            encoder_ffn_dim=512,
            decoder_ffn_dim=512,
            num_queries=20,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
        )
    hf_config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=backbone,
        num_labels=config["num_classes"],
        auxiliary_loss=True,
        # the official DETR's dropout sites (HF's defaults turn two of them off)
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        **sizes,
    )
    model = DetrForObjectDetection(hf_config).train()
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
    print(f"{'config':<7} {'impl':<16} {'images/s':>9} {'peak RSS MB':>12} {'+MB':>7}")
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
            print(f"{config_name:<7} {impl:<16} {speed[impl]:>9.2f} {peak:>12.0f} {increase:>7.0f}")
        if "hf" in speed:
            ratio = speed["detr_ray_frozen"] / speed["hf"]
            print(
                f"{config_name:<7} speed, same trainable parameters: detr_ray / hf = {ratio:.2f}x"
            )


if __name__ == "__main__":
    main()
