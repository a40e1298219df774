"""Multi-scale deformable attention's core: values sampled at points, weighted, summed.

Deformable DETR (Zhu et al., 2021) lets each query look at ``P`` points on
each of ``L`` feature levels, per head, instead of at every key. Given the
points and their weights, the output of a query is

    out[q, m] = sum over levels l, points p of  A[q, m, l, p] * bilinear(V_l[m], loc[q, m, l, p])

where ``V_l[m]`` is head ``m``'s value map of level ``l`` and ``bilinear``
reads it as ``grid_sample(..., align_corners=False, padding_mode="zeros")``
does: a location ``(x, y)`` in ``[0, 1]`` is the pixel coordinate
``(x * W - 0.5, y * H - 0.5)``, and corners outside the map count as zero.

The reference implementations call ``grid_sample`` once per level. This
one calls it once for all levels, heads and points, on an *atlas*: every
level's map packed into one image, the largest at the left and the others
stacked in a column at its right, with a row or column of zeros between
any two (:func:`atlas_layout`). A location on a level becomes the same
pixel of the atlas. Bilinear sampling reads the four pixels around it, so a
point up to one pixel past its level's edge reads the zero gutter, as
``padding_mode="zeros"`` would; a point farther out, whose four pixels all
lie outside its level, reads exact zeros in the reference, so here its
weight is set to zero (it could otherwise land on a neighbouring level).
The result equals the per-level reference, values and gradients.

The atlas is about 1.5 times the largest level (a canvas of the largest
level's size per level, an earlier version here, was 4 times), and the
samples come out with levels and points side by side, so the weighted sum
is one reduction over the last dimension. Plain PyTorch, differentiable, any
device; BENCHMARKS.md compares it with the per-level loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LevelShapes = Sequence[tuple[int, int]]  # (H_l, W_l) per level, as Python ints


def shapes_list(spatial_shapes: Tensor, level_shapes: LevelShapes | None) -> LevelShapes:
    """The levels' ``(H_l, W_l)`` as Python ints: ``level_shapes`` when the caller
    has them (no device read), else read from ``spatial_shapes``."""
    if level_shapes is not None:
        return level_shapes
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def level_starts(spatial_shapes: Tensor) -> Tensor:
    """``(L,)`` offsets of each level's first token in the flattened tokens,
    from ``spatial_shapes`` ``(L, 2)`` = ``(H_l, W_l)`` per level."""
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def atlas_layout(level_shapes: LevelShapes) -> tuple[list[tuple[int, int]], int, int]:
    """Where each level sits on the atlas: its top-left ``(x0, y0)``, and the
    atlas's ``(height, width)``. Level 0 at ``(0, 0)``; level ``l >= 1`` at
    ``x0 = W_0 + 1`` and ``y0`` the heights of levels ``1 .. l-1`` plus one
    gutter row each."""
    h0, w0 = level_shapes[0]
    origins, y = [(0, 0)], 0
    for h, _ in level_shapes[1:]:
        origins.append((w0 + 1, y))
        y += h + 1
    if len(level_shapes) == 1:
        return origins, h0, w0
    width = w0 + 1 + max(w for _, w in level_shapes[1:])
    return origins, max(h0, y - 1), width


def atlas_origins(spatial_shapes: Tensor) -> Tensor:
    """:func:`atlas_layout`'s origins as an ``(L, 2)`` ``(x0, y0)`` tensor on
    ``spatial_shapes``' device, computed there (no copy from the host)."""
    heights, widths = spatial_shapes[:, 0], spatial_shapes[:, 1]
    below = (heights[1:] + 1).cumsum(0)  # rows taken by levels 1.., gutters included
    y0 = torch.cat([below.new_zeros(2), below[:-1]])[: len(heights)]
    x0 = (widths[0] + 1).expand(len(heights)).clone()
    x0[0] = 0
    return torch.stack([x0, y0], -1)


def atlas_index(level_shapes: LevelShapes, device: torch.device) -> Tensor:
    """``(S,)``: each flattened token's position on the flattened atlas."""
    origins, _, width = atlas_layout(level_shapes)
    parts = []
    for (x0, y0), (h, w) in zip(origins, level_shapes):  # L is 4: index arithmetic only
        rows = (torch.arange(h, device=device)[:, None] + y0) * width
        parts.append((rows + torch.arange(w, device=device)[None, :] + x0).reshape(-1))
    return torch.cat(parts)


def deformable_sample(
    value: Tensor,
    spatial_shapes: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    level_shapes: LevelShapes | None = None,
) -> Tensor:
    """Sample, weight and sum: the core of multi-scale deformable attention.

    Args:
        value: ``(N, S, M, D)``: each level's map flattened row by row and the
            levels one after the other (``S = sum H_l * W_l``), ``M`` heads of
            ``D`` channels.
        spatial_shapes: ``(L, 2)`` long, ``(H_l, W_l)`` of each level, in the
            order the levels sit in ``value``.
        sampling_locations: ``(N, Q, M, L, P, 2)``, ``(x, y)`` normalised to
            ``[0, 1]`` over each level's map (points outside read zeros).
        attention_weights: ``(N, Q, M, L, P)`` (softmax-ed over ``L * P`` by
            the caller).
        level_shapes: ``spatial_shapes`` as Python ints, if the caller has
            them: the atlas's size is then known without reading the device.

    Returns:
        ``(N, Q, M * D)``: the heads' outputs side by side.
    """
    n, s, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    shapes = shapes_list(spatial_shapes, level_shapes)
    _, height, width = atlas_layout(shapes)
    # (N*M, D, height, width): zeros, every level's map copied to its place
    rows = value.permute(0, 2, 3, 1).reshape(n * m, d, s)
    atlas = rows.new_zeros(n * m, d, height * width)
    atlas = atlas.index_copy(2, atlas_index(shapes, value.device), rows)
    atlas = atlas.view(n * m, d, height, width)
    # A location on level l is, in the atlas's normalised coordinates,
    # loc * (2 * size_l / atlas size) + (2 * origin_l / atlas size - 1).
    dtype = sampling_locations.dtype
    sizes = spatial_shapes.flip(-1).to(dtype)  # (L, 2) = (W_l, H_l)
    extent = torch.stack((sizes[:, 0] * (2 / width), sizes[:, 1] * (2 / height)), -1)
    origins = atlas_origins(spatial_shapes).to(dtype)
    shift = torch.stack((origins[:, 0] * (2 / width), origins[:, 1] * (2 / height)), -1) - 1
    grid = sampling_locations * extent[:, None, :] + shift[:, None, :]  # (N, Q, M, L, P, 2)
    grid = grid.permute(0, 2, 1, 3, 4, 5).reshape(n * m, q, num_levels * p, 2)
    sampled = F.grid_sample(
        atlas, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (N*M, D, Q, L*P)
    # Points whose four pixels all lie outside their level read zero (as the
    # reference's padding does): in pixels, x * W_l - 0.5 must be in (-1, W_l).
    margin = 0.5 / sizes[:, None, :]  # (L, 1, 2)
    inside = ((sampling_locations > -margin) & (sampling_locations < 1 + margin)).all(-1)
    weights = attention_weights * inside  # (N, Q, M, L, P)
    weights = weights.permute(0, 2, 1, 3, 4).reshape(n * m, 1, q, num_levels * p)
    out = (sampled * weights).sum(-1)  # (N*M, D, Q)
    return out.view(n, m * d, q).transpose(1, 2)
