"""Data loading throughput against the training step it has to feed.

    python bench/bench_data.py [--batches 12]

Two settings:
- ``cpu``:  the synthetic shapes at 128 px with the CPU demo's augmentation
            (the official recipe scaled to a 128 px short side), batch 8,
            fed to a ``detr_r18_small`` step;
- ``coco``: COCO-sized images (640 px long side, like COCO's) through the
            official augmentation (short side 480-800, long side <= 1333),
            batch 2, fed to a ``detr_r50`` step.

For 0, 1 and 2 ``DataLoader`` workers it prints the loader's images/s (decode,
augment, pad) and the ratio loader / training step: above 1 the loader keeps
up with that many CPU cores left for the step; below 1 it is the bottleneck.
Both rates are measured in this run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.collate import PadCollate
from detr_ray.data.synthetic import generate
from detr_ray.data.transforms import build_transforms

SETTINGS = {
    "cpu": dict(size=128, images=96, batch=8, scale=128, preset="detr_r18_small"),
    "coco": dict(size=640, images=32, batch=2, scale=800, preset="detr_r50"),
}


def loader_rate(dataset, batch: int, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        collate_fn=PadCollate(size_divisor=32),
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, seen = time.perf_counter(), 0
    while seen < batches * batch:
        try:
            seen += len(next(iterator))
        except StopIteration:
            iterator = iter(loader)
    return seen / (time.perf_counter() - start)


def step_rate(dataset, preset: str, batch: int, steps: int = 3) -> float:
    from detr_ray.config import LossConfig, MatcherConfig, preset_config
    from detr_ray.criterion.build import build_criterion
    from detr_ray.model.build import build_preset

    num_classes = dataset.label_map.num_classes
    model = build_preset(preset, num_classes=num_classes).train()
    criterion = build_criterion(preset_config(preset), MatcherConfig(), LossConfig(), num_classes)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collate = PadCollate(size_divisor=32)
    batches = [collate([dataset[i * batch + j] for j in range(batch)]) for i in range(steps + 1)]

    def step(b):
        losses = criterion(*model(*b.inputs()), b.targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()

    step(batches[0])
    start = time.perf_counter()
    for b in batches[1:]:
        step(b)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--settings", default="cpu,coco")
    args = parser.parse_args()
    print(
        f"{'setting':<8} {'workers':>7} {'loader img/s':>13} {'step img/s':>11} {'loader/step':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings.split(","):
            s = SETTINGS[name]
            data = generate(Path(tmp) / name, num_train=s["images"], num_val=1, size=s["size"])
            augmentation = (
                AugmentationConfig.scaled(s["scale"]) if s["scale"] != 800 else AugmentationConfig()
            )
            dataset = CocoDetection(
                data.train_ann, data.train_images, build_transforms(augmentation, train=True)
            )
            training = step_rate(dataset, s["preset"], s["batch"])
            for workers in (0, 1, 2):
                rate = loader_rate(dataset, s["batch"], workers, args.batches)
                ratio = rate / training
                print(f"{name:<8} {workers:>7} {rate:>13.1f} {training:>11.2f} {ratio:>11.1f}x")


if __name__ == "__main__":
    main()
