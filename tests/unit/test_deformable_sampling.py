"""Multi-scale deformable sampling against a straightforward reference and by hand.

The reference is written here the plain way: one ``grid_sample`` per level
and per head, as Deformable DETR's papers describe it (``align_corners=False``,
zeros outside the map). float64, values, gradients, borders and padded tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detr_ray.model.deformable.sampling import (
    atlas_index,
    atlas_layout,
    atlas_origins,
    deformable_sample,
    level_starts,
)


def reference_sample(value, shapes, locations, weights):
    n, _, m, d = value.shape
    _, q, _, num_levels, p, _ = locations.shape
    out = value.new_zeros(n, q, m, d)
    start = 0
    for level, (h, w) in enumerate(shapes.tolist()):
        level_value = value[:, start : start + h * w]  # (N, H*W, M, D)
        start += h * w
        for head in range(m):
            image = level_value[:, :, head].transpose(1, 2).reshape(n, d, h, w)
            grid = 2 * locations[:, :, head, level] - 1  # (N, Q, P, 2)
            sampled = F.grid_sample(
                image, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )  # (N, D, Q, P)
            weight = weights[:, :, head, level]  # (N, Q, P)
            out[:, :, head] += (sampled * weight[:, None]).sum(-1).transpose(1, 2)
    return out.reshape(n, q, m * d)


def _inputs(seed, shapes, n=2, q=7, m=3, d=4, p=3, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shapes)
    s = int(shapes.prod(1).sum())
    num_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    # locations a little past the borders too (-0.1 .. 1.1 with spread 1.2)
    centre = torch.rand(n, q, m, num_levels, p, 2, generator=g, dtype=torch.float64)
    locations = 0.5 + (centre - 0.5) * spread
    weights = torch.rand(n, q, m, num_levels * p, generator=g, dtype=torch.float64)
    weights = weights.softmax(-1).view(n, q, m, num_levels, p)
    return value, shapes, locations, weights


@pytest.mark.parametrize(
    "shapes",
    [[[8, 10], [4, 5], [2, 3], [1, 2]], [[3, 4]], [[1, 1], [1, 1], [1, 1]], [[2, 9], [5, 1]]],
)
def test_the_atlas_holds_every_level_apart_and_the_device_agrees_where(shapes):
    origins, height, width = atlas_layout(shapes)
    assert torch.equal(atlas_origins(torch.tensor(shapes)), torch.tensor(origins))
    taken = torch.zeros(height + 1, width + 1, dtype=torch.bool)  # room for the gutters
    for (x0, y0), (h, w) in zip(origins, shapes):
        assert x0 + w <= width and y0 + h <= height
        # a level and its one-pixel border (the gutter) touch no other level
        assert not taken[y0 : y0 + h, x0 : x0 + w].any()
        taken[max(y0 - 1, 0) : y0 + h + 1, max(x0 - 1, 0) : x0 + w + 1] = True
    positions = atlas_index(shapes, torch.device("cpu"))
    assert len(positions.unique()) == sum(h * w for h, w in shapes)


def test_level_starts_are_the_flattened_offsets():
    assert level_starts(torch.tensor([[4, 6], [2, 3], [1, 2]])).tolist() == [0, 24, 30]


@pytest.mark.parametrize(
    "spread", [1.0, 1.2, 3.0], ids=["inside", "past-the-borders", "far-outside"]
)
def test_it_equals_per_level_per_head_grid_sample(spread):
    # far outside, a point lands where another level sits on the atlas: it must read zeros
    value, shapes, locations, weights = _inputs(0, [[8, 10], [4, 5], [2, 3], [1, 2]], spread=spread)
    ours = deformable_sample(value, shapes, locations, weights)
    theirs = reference_sample(value, shapes, locations, weights)
    assert ours.shape == (2, 7, 3 * 4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spread", [1.1, 3.0])
def test_gradients_equal_the_reference_ones(spread):
    tensors = _inputs(1, [[5, 7], [3, 4], [9, 2]], spread=spread)
    grads = []
    for fn in (deformable_sample, reference_sample):
        leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in tensors]
        out = fn(*leaves)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([leaves[i].grad for i in (0, 2, 3)])  # value, locations, weights
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_padded_tokens_zeroed_in_the_values_are_never_read():
    """The attention zeroes the values of padded pixels first; points that land
    there read zeros: changing what sits under the padding changes nothing."""
    value, shapes, locations, weights = _inputs(2, [[6, 6], [3, 3]])
    padded = torch.zeros(value.shape[:2], dtype=torch.bool)
    padded[:, 4:6] = True  # the last two columns of level 0's first row ...
    padded[:, 36 + 6 : 36 + 9] = True  # ... and level 1's last row
    masked = value.masked_fill(padded[..., None, None], 0.0)
    other = value.clone()
    other[padded] = 100.0
    ours = deformable_sample(masked, shapes, locations, weights)
    again = deformable_sample(
        other.masked_fill(padded[..., None, None], 0.0), shapes, locations, weights
    )
    torch.testing.assert_close(ours, again, rtol=0, atol=0)
    torch.testing.assert_close(
        ours, reference_sample(masked, shapes, locations, weights), rtol=0, atol=1e-6
    )


def test_worked_examples_on_a_two_by_two_map():
    # one image, one head, one channel, one level: V = [[1, 2], [3, 4]]
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])

    def at(x, y):
        locations = torch.tensor([x, y], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
        weights = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
        return deformable_sample(value, shapes, locations, weights).item()

    assert at(0.25, 0.25) == pytest.approx(1.0)  # pixel (0, 0)'s centre
    assert at(0.75, 0.75) == pytest.approx(4.0)
    assert at(0.5, 0.5) == pytest.approx(2.5)  # the mean of the four
    assert at(0.5, 0.25) == pytest.approx(1.5)  # halfway along the first row
    assert at(0.0, 0.0) == pytest.approx(0.25)  # pixel (-0.5, -0.5): a quarter of V[0, 0]
    assert at(1.5, 0.5) == pytest.approx(0.0)  # far outside: zeros
