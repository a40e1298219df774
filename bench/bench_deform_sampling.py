"""Multi-scale deformable sampling: detr_ray's one call on an atlas against per-level grid_sample.

    python bench/bench_deform_sampling.py [--reps 5] [--scales official,cpu]

The baseline is the structure of the reference implementations' pure-PyTorch
path (the official repo's ``ms_deform_attn_core_pytorch``, HF transformers'
``MultiScaleDeformableAttention`` without its kernel): one ``grid_sample``
per level over all heads. HF's own module is timed too when ``transformers``
is installed (``bench`` extra). Both run in the same process on the same
inputs, interleaved, forward and backward; the script checks that the outputs
agree, then prints median milliseconds and the speed-up of detr_ray.

Scales (the encoder's self-attention, where the queries are every token):
- ``official``: one 800 x 1066 image, strides 8-64 (17,821 tokens), 8 heads
  of 32 channels, 4 levels x 4 points;
- ``cpu``: 8 images of 128 x 128, strides 8-64 (340 tokens), 4 heads of 32
  channels, 4 levels x 4 points.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from detr_ray.model.deformable.sampling import deformable_sample, level_starts

SCALES = {
    "official": dict(n=1, hw=(800, 1066), heads=8, channels=32, points=4),
    "cpu": dict(n=8, hw=(128, 128), heads=4, channels=32, points=4),
}
STRIDES = (8, 16, 32, 64)


def per_level(value, shapes, locations, weights):
    """One grid_sample per level, all heads at once (the reference structure)."""
    n, _, m, d = value.shape
    _, q, _, num_levels, p, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes.tolist()):
        start = int(level_starts(shapes)[level])
        image = value[:, start : start + h * w].flatten(2).transpose(1, 2)
        image = image.reshape(n * m, d, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Q, P, 2)
        sampled.append(
            F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    weights = weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * p)
    out = (torch.stack(sampled, -2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, q).transpose(1, 2)


def hf_module():
    try:
        from transformers.models.deformable_detr.modeling_deformable_detr import (
            MultiScaleDeformableAttention,
        )
    except ImportError:
        return None
    module = MultiScaleDeformableAttention()

    def run(value, shapes, locations, weights):
        return module(
            value,
            shapes,
            [tuple(s) for s in shapes.tolist()],
            level_starts(shapes),
            locations,
            weights,
            64,
        )

    return run


def make_inputs(n, hw, heads, channels, points, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[-(-hw[0] // s), -(-hw[1] // s)] for s in STRIDES])
    tokens = int(shapes.prod(1).sum())
    value = torch.randn(n, tokens, heads, channels, generator=g)
    locations = torch.rand(n, tokens, heads, len(STRIDES), points, 2, generator=g)
    weights = torch.rand(n, tokens, heads, len(STRIDES) * points, generator=g).softmax(-1)
    return value, shapes, locations, weights.view(n, tokens, heads, len(STRIDES), points)


def time_once(fn, inputs):
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    start = time.perf_counter()
    fn(*leaves).sum().backward()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scales", default="official,cpu")
    args = parser.parse_args()
    impls = {"detr_ray": deformable_sample, "per_level": per_level}
    hf = hf_module()
    if hf is not None:
        impls["hf"] = hf
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; forward+backward, ms")
    for name in args.scales.split(","):
        inputs = make_inputs(**SCALES[name])
        with torch.no_grad():
            expected = per_level(*inputs)
            for fn in impls.values():
                torch.testing.assert_close(fn(*inputs), expected, rtol=1e-4, atol=1e-4)
        times = {label: [] for label in impls}
        for _ in range(args.reps):
            for label, fn in impls.items():
                times[label].append(time_once(fn, inputs))
        median = {label: statistics.median(t) for label, t in times.items()}
        row = ", ".join(f"{label} {ms:.1f}" for label, ms in median.items())
        ratios = ", ".join(
            f"{median[label] / median['detr_ray']:.2f}x over {label}"
            for label in impls
            if label != "detr_ray"
        )
        tokens = inputs[0].shape[1]
        print(f"{name} ({tokens} tokens): {row}; detr_ray {ratios}")


if __name__ == "__main__":
    main()
