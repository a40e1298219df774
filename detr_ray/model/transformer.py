"""The DETR encoder-decoder transformer (post-norm), batch-first.

Notation: ``B`` images, ``S = H * W`` feature-map positions, ``Q`` queries,
``C`` channels (``d_model``), ``L`` decoder layers.

As in the official DETR: the positional encoding is added to queries and
keys (never values) at every attention; the decoder's queries start at zero
and carry learned query positional embeddings; the encoder's padding mask is
the key padding mask of every attention over the image; one final LayerNorm
is applied to every decoder layer's output. Attention is
``nn.MultiheadAttention`` with ``need_weights=False``, which runs PyTorch's
fused scaled-dot-product kernel (the same math, no attention matrix kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        """``src``, ``pos`` ``(B, S, C)``; ``key_padding_mask`` ``(B, S)`` True = padding."""
        q = k = src + pos
        attended = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[
            0
        ]
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        memory_padding_mask: Tensor,
    ) -> Tensor:
        """``tgt``, ``query_pos`` ``(B, Q, C)``; ``memory``, ``pos`` ``(B, S, C)``."""
        q = k = tgt + query_pos
        attended = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attended))
        attended = self.cross_attn(
            tgt + query_pos,
            memory + pos,
            memory,
            key_padding_mask=memory_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class Encoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src


class Decoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos, memory_padding_mask) -> Tensor:
        """Returns every layer's normalised output, ``(L, B, Q, C)``."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class Transformer(nn.Module):
    """Encoder over the image features, decoder over the object queries."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        layer = dict(nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout)
        self.encoder = Encoder(num_encoder_layers, d_model=d_model, **layer)
        self.decoder = Decoder(num_decoder_layers, d_model, **layer)
        self.d_model = d_model
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, padding_mask: Tensor, query_embed: Tensor, pos: Tensor
    ) -> Tensor:
        """Run the encoder and decoder.

        Args:
            src: ``(B, C, H, W)`` projected image features.
            padding_mask: ``(B, H, W)`` bool, True = padding.
            query_embed: ``(Q, C)`` learned query positional embeddings.
            pos: ``(B, C, H, W)`` positional encoding of the feature map.

        Returns:
            ``(L, B, Q, C)``: every decoder layer's output after the final norm.
        """
        batch = src.shape[0]
        src = src.flatten(2).transpose(1, 2)  # (B, S, C)
        pos = pos.flatten(2).transpose(1, 2)  # (B, S, C)
        key_padding_mask = padding_mask.flatten(1)  # (B, S)
        query_pos = query_embed[None].expand(batch, -1, -1)  # (B, Q, C)
        memory = self.encoder(src, pos, key_padding_mask)
        tgt = torch.zeros_like(query_pos)
        return self.decoder(tgt, memory, pos, query_pos, key_padding_mask)
