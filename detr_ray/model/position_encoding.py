"""Positional encodings of the image feature map, computed from the padding mask.

Both return ``(B, 2 * num_feats, H, W)`` for a ``(B, H, W)`` bool mask
(True = padding); ``2 * num_feats`` is the transformer's width.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinePositionalEncoding(nn.Module):
    """The reference's sine/cosine encoding of pixel coordinates.

    Coordinates are cumulative sums of the non-padding mask along y and x
    (so padding does not shift them), optionally normalised to ``[0, scale]``
    by each image's own extent (after adding ``offset``: Deformable DETR's
    -0.5 puts a pixel at its centre); channel ``i`` divides them by
    ``temperature ** (2 * (i // 2) / num_feats)``, even channels take the
    sine and odd ones the cosine (interleaved), and the y encoding comes
    before the x encoding.
    """

    def __init__(
        self,
        num_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
        offset: float = 0.0,
    ):
        super().__init__()
        if num_feats % 2:
            raise ValueError(f"num_feats must be even (sine/cosine pairs), got {num_feats}")
        self.num_feats = num_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, padding_mask: Tensor) -> Tensor:
        not_mask = ~padding_mask  # (B, H, W)
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        channel = torch.arange(self.num_feats, dtype=torch.float32, device=padding_mask.device)
        dim_t = self.temperature ** (
            2 * torch.div(channel, 2, rounding_mode="floor") / self.num_feats
        )
        pos_x = x_embed[..., None] / dim_t  # (B, H, W, num_feats)
        pos_y = y_embed[..., None] / dim_t
        # interleave: sin of even channels, cos of odd channels
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)


class LearnedPositionalEncoding(nn.Module):
    """Learned row and column embeddings (the official DETR's ``learned`` option).

    Feature maps up to ``max_size`` x ``max_size``; the column (x) embedding
    comes first, as in the official code.
    """

    def __init__(self, num_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_feats)
        self.col_embed = nn.Embedding(max_size, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, padding_mask: Tensor) -> Tensor:
        batch, height, width = padding_mask.shape
        if max(height, width) > self.row_embed.num_embeddings:
            raise ValueError(
                f"feature map {height}x{width} exceeds the learned encoding's "
                f"{self.row_embed.num_embeddings} positions; use the sine encoding"
            )
        device = padding_mask.device
        x_emb = self.col_embed(torch.arange(width, device=device))  # (W, F)
        y_emb = self.row_embed(torch.arange(height, device=device))  # (H, F)
        pos = torch.cat(
            (x_emb[None].expand(height, -1, -1), y_emb[:, None].expand(-1, width, -1)), dim=-1
        )  # (H, W, 2F)
        return pos.permute(2, 0, 1)[None].expand(batch, -1, -1, -1)
