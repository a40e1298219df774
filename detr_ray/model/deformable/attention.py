"""Multi-scale deformable attention: each query reads a few learned points per level and head.

From a query's features, two linear maps predict, per head, level and point,
an offset from the query's reference point and a weight (softmax over the
``L * P`` points of a head); the values at those points are read by
bilinear sampling (:func:`~detr_ray.model.deformable.sampling.deformable_sample`)
and summed with those weights. Cost is linear in the number of queries, not
quadratic in the number of tokens, so the encoder can attend over every level
(strides 8 to 64).

Parameter names follow the official Deformable-DETR repository
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``),
so its checkpoints and HF transformers' load without renaming inside a layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from detr_ray.model.deformable.sampling import LevelShapes, deformable_sample


class DeformableAttention(nn.Module):
    """Multi-scale deformable attention over ``num_levels`` levels.

    Args:
        dim: model width ``C``; split into ``num_heads`` heads of ``C / num_heads``.
        num_levels: feature levels ``L`` in the values.
        num_heads: ``M``.
        num_points: sampled points ``P`` per head and level.
    """

    def __init__(
        self, dim: int = 256, num_levels: int = 4, num_heads: int = 8, num_points: int = 4
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_levels = dim, num_levels
        self.num_heads, self.num_points = num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: at the start, head ``m``'s points lie on
        the ray at angle ``2 pi m / M`` from the reference point, point ``p`` at
        ``p + 1`` cells (in the square's norm), and every point weighs the same."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float64) * (2 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values  # (M, 2)
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float64)
        # (M, L, P, 2): the same ray on every level
        bias = directions[:, None, None, :] * steps[None, None, :, None]
        bias = bias.expand(self.num_heads, self.num_levels, self.num_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for linear in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        values: Tensor,
        spatial_shapes: Tensor,
        padding_mask: Tensor | None = None,
        level_shapes: LevelShapes | None = None,
    ) -> Tensor:
        """Attend from ``query`` to ``values``.

        Args:
            query: ``(N, Q, C)``, the position embedding already added.
            reference_points: ``(N, Q, L, 2)`` ``(x, y)`` in ``[0, 1]`` per level
                (offsets are then in cells of each level), or ``(N, Q, L, 4)``
                ``(cx, cy, w, h)`` boxes (offsets are then fractions of the box:
                ``offset / P * half the box``).
            values: ``(N, S, C)``, every level's tokens flattened (row-major)
                and concatenated in the order of ``spatial_shapes``.
            spatial_shapes: ``(L, 2)`` long, ``(H_l, W_l)``.
            padding_mask: ``(N, S)`` bool, True at padded pixels: their values
                are zeroed, so points that land there read nothing.
            level_shapes: ``spatial_shapes`` as Python ints, if known (no device read).

        Returns:
            ``(N, Q, C)``.
        """
        n, q, _ = query.shape
        m, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(values)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, value.shape[1], m, self.dim // m)
        offsets = self.sampling_offsets(query).view(n, q, m, levels, points, 2)
        weights = self.attention_weights(query).view(n, q, m, levels * points)
        weights = weights.softmax(-1).view(n, q, m, levels, points)
        if reference_points.shape[-1] == 2:
            # offsets in cells of each level: divide by (W_l, H_l)
            cells = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) = (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / cells[:, None, :]
        elif reference_points.shape[-1] == 4:
            centres = reference_points[:, :, None, :, None, :2]
            half_sizes = reference_points[:, :, None, :, None, 2:] * 0.5
            locations = centres + offsets / points * half_sizes
        else:
            raise ValueError(
                "reference_points must end in 2 (points) or 4 (boxes), not "
                f"{tuple(reference_points.shape)}"
            )
        sampled = deformable_sample(value, spatial_shapes, locations, weights, level_shapes)
        return self.output_proj(sampled)
