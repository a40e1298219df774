"""Deformable DETR's encoder and decoder over multi-scale tokens.

Tokens are every level's feature map flattened row by row, the levels one
after the other (``S = sum H_l * W_l``); ``spatial_shapes`` ``(L, 2)`` gives
each level's ``(H_l, W_l)``. Padding differs per image, so each image's
valid share of each level, ``valid_ratios`` ``(N, L, 2)`` = ``(w, h)``,
scales the reference points: a normalised point means the same place of the
image on every level.

- Encoder layer: deformable self-attention (each token's reference point is
  its own pixel centre, on every level), then a feed-forward block; post-norm.
- Decoder layer: full self-attention among the queries, deformable
  cross-attention to the encoder's tokens from the query's reference point
  (``(x, y)``, or a ``(cx, cy, w, h)`` box once boxes are refined), then a
  feed-forward block; post-norm.
- With box refinement, each decoder layer's box head moves the reference box
  of the next layer (detached: the next layer learns from where the box is,
  not through it).

Module and parameter names follow the official Deformable-DETR repository.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ray.model.deformable.attention import DeformableAttention
from detr_ray.model.deformable.sampling import LevelShapes, shapes_list


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``logit(x)``, with ``x`` clamped into ``[eps, 1 - eps]`` first."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def valid_ratios(padding_masks: list[Tensor]) -> Tensor:
    """``(N, L, 2)`` ``(w, h)``: the share of each level's width and height that
    holds the image, from each level's ``(N, H_l, W_l)`` padding mask (True:
    padding; images sit at the top left of their padded batch)."""
    ratios = []
    for mask in padding_masks:
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).to(torch.float32) / h
        valid_w = (~mask[:, 0, :]).sum(1).to(torch.float32) / w
        ratios.append(torch.stack([valid_w, valid_h], -1))
    return torch.stack(ratios, 1)


def encoder_reference_points(level_shapes: LevelShapes, valid_ratios: Tensor) -> Tensor:
    """``(N, S, L, 2)``: each token's pixel centre ``(x, y)``, normalised by its
    image's valid part of its level, then seen from every level.

    Args:
        level_shapes: ``(H_l, W_l)`` of each level.
        valid_ratios: ``(N, L, 2)`` ``(w, h)`` fractions of each level that
            hold the image (the rest is padding).
    """
    dtype, device = valid_ratios.dtype, valid_ratios.device
    points = []
    for level, (h, w) in enumerate(level_shapes):  # L is 4: a short loop
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=dtype, device=device) + 0.5,
            torch.arange(w, dtype=dtype, device=device) + 0.5,
            indexing="ij",
        )
        x = xs.reshape(1, -1) / (valid_ratios[:, level, 0:1] * w)  # (N, H*W)
        y = ys.reshape(1, -1) / (valid_ratios[:, level, 1:2] * h)
        points.append(torch.stack([x, y], -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class _FeedForwardMixin:
    """``linear2(dropout(relu(linear1(x))))`` then dropout: the layers' feed-forward
    block, its linears on the layer itself (the official names)."""

    linear1: nn.Linear
    linear2: nn.Linear
    ffn_dropout_inner: nn.Dropout
    ffn_dropout_out: nn.Dropout

    def _build_ffn(self, dim: int, hidden: int, dropout: float) -> None:
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.ffn_dropout_inner = nn.Dropout(dropout)
        self.ffn_dropout_out = nn.Dropout(dropout)

    def _ffn(self, x: Tensor) -> Tensor:
        hidden = self.ffn_dropout_inner(F.relu(self.linear1(x)))
        return self.ffn_dropout_out(self.linear2(hidden))


class DeformableEncoderLayer(_FeedForwardMixin, nn.Module):
    def __init__(
        self,
        dim: int = 256,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
    ):
        super().__init__()
        self.self_attn = DeformableAttention(dim, num_levels, num_heads, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self._build_ffn(dim, ffn_dim, dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        padding_mask: Tensor | None,
        level_shapes: LevelShapes | None = None,
    ) -> Tensor:
        """``tokens``, ``pos`` ``(N, S, C)``; ``reference_points`` ``(N, S, L, 2)``."""
        attended = self.self_attn(
            _with_pos(tokens, pos),
            reference_points,
            tokens,
            spatial_shapes,
            padding_mask,
            level_shapes,
        )
        tokens = self.norm1(tokens + self.dropout1(attended))
        return self.norm2(tokens + self._ffn(tokens))


class DeformableDecoderLayer(_FeedForwardMixin, nn.Module):
    def __init__(
        self,
        dim: int = 256,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, num_levels, num_heads, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self._build_ffn(dim, ffn_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        queries: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        padding_mask: Tensor | None,
        level_shapes: LevelShapes | None = None,
    ) -> Tensor:
        """``queries``, ``query_pos`` ``(N, Q, C)``; ``reference_points``
        ``(N, Q, L, 2 or 4)`` (already scaled to each level's valid part);
        ``memory`` ``(N, S, C)`` the encoder's tokens."""
        q = k = _with_pos(queries, query_pos)
        attended = self.self_attn(q, k, queries, need_weights=False)[0]
        queries = self.norm2(queries + self.dropout2(attended))
        attended = self.cross_attn(
            _with_pos(queries, query_pos),
            reference_points,
            memory,
            spatial_shapes,
            padding_mask,
            level_shapes,
        )
        queries = self.norm1(queries + self.dropout1(attended))
        return self.norm3(queries + self._ffn(queries))


class DeformableEncoder(nn.Module):
    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        spatial_shapes: Tensor,
        valid_ratios: Tensor,
        padding_mask: Tensor | None,
        level_shapes: LevelShapes | None = None,
    ) -> Tensor:
        """``(N, S, C)`` tokens in, ``(N, S, C)`` out; ``level_shapes`` as
        ``spatial_shapes`` in Python ints, if known (no device read)."""
        shapes = shapes_list(spatial_shapes, level_shapes)
        reference_points = encoder_reference_points(shapes, valid_ratios)
        for layer in self.layers:
            tokens = layer(tokens, pos, reference_points, spatial_shapes, padding_mask, shapes)
        return tokens


class DeformableDecoder(nn.Module):
    """The decoder; ``bbox_embed`` (set by the detector for box refinement):
    one box head per layer, whose output moves the next layer's reference."""

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.bbox_embed: nn.ModuleList | None = None

    def forward(
        self,
        queries: Tensor,
        query_pos: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        spatial_shapes: Tensor,
        valid_ratios: Tensor,
        padding_mask: Tensor | None,
        level_shapes: LevelShapes | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Every layer's queries and the reference each layer started from.

        Args:
            reference_points: ``(N, Q, 2)`` points or ``(N, Q, 4)`` boxes,
                normalised over the padded image.

        Returns:
            ``(L_dec, N, Q, C)`` the layers' outputs, and per layer the
            reference it used, ``(N, Q, 2 or 4)`` (the first is the input's;
            refined ones are boxes even when the first is a point).
        """
        outputs, references = [], []
        for index, layer in enumerate(self.layers):
            references.append(reference_points)
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # (N, 1, L, 4)
            else:
                scale = valid_ratios[:, None]  # (N, 1, L, 2)
            per_level = reference_points[:, :, None] * scale
            queries = layer(
                queries, query_pos, per_level, memory, spatial_shapes, padding_mask, level_shapes
            )
            outputs.append(queries)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[index](queries)  # (N, Q, 4) in logit space
                if reference_points.shape[-1] == 4:
                    moved = delta + inverse_sigmoid(reference_points)
                else:
                    centre = delta[..., :2] + inverse_sigmoid(reference_points)
                    moved = torch.cat([centre, delta[..., 2:]], -1)
                reference_points = moved.sigmoid().detach()
        return torch.stack(outputs), references
