"""The DETR encoder-decoder transformer (post-norm), batch-first.

Notation: ``B`` images, ``S = H * W`` feature-map positions, ``Q`` queries,
``C`` channels (``d_model``), ``L`` decoder layers.

As in the official DETR: the positional encoding is added to queries and
keys (never values) at every attention; the decoder's queries start at zero
and carry learned query positional embeddings; the encoder's padding mask is
the key padding mask of every attention over the image; one final LayerNorm
is applied to every decoder layer's output. Layers are post-norm by default;
``pre_norm`` is the official code's ``--pre_norm`` option (LayerNorm before
each sublayer, plus a final encoder norm), which trains more easily from
scratch. Attention is
``nn.MultiheadAttention`` with ``need_weights=False``, which runs PyTorch's
fused scaled-dot-product kernel (the same math, no attention matrix kept).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward, dropout, pre_norm=False):
        super().__init__()
        self.pre_norm = pre_norm
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
        if self.pre_norm:
            src = src + self.dropout1(self._attend(self.norm1(src), pos, key_padding_mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        src = self.norm1(src + self.dropout1(self._attend(src, pos, key_padding_mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))

    def _attend(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        q = k = x + pos
        return self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward, dropout, pre_norm=False):
        super().__init__()
        self.pre_norm = pre_norm
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
        num_groups: int = 1,
    ) -> Tensor:
        """``tgt``, ``query_pos`` ``(B, Q, C)``; ``memory``, ``pos`` ``(B, S, C)``.

        ``num_groups`` > 1: the ``Q`` queries are that many equal groups (one
        after the other), and self-attention stays within each group.
        """
        cross = dict(memory=memory, pos=pos, query_pos=query_pos, mask=memory_padding_mask)
        if self.pre_norm:
            x = self.norm1(tgt)
            tgt = tgt + self.dropout1(self._self(x, query_pos, num_groups))
            tgt = tgt + self.dropout2(self._cross(self.norm2(tgt), **cross))
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        tgt = self.norm1(tgt + self.dropout1(self._self(tgt, query_pos, num_groups)))
        tgt = self.norm2(tgt + self.dropout2(self._cross(tgt, **cross)))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))

    def _self(self, x: Tensor, query_pos: Tensor, num_groups: int) -> Tensor:
        """Queries attend to the queries of their own group (keys with positions)."""
        q = k = x + query_pos
        if num_groups == 1:
            return self.self_attn(q, k, x, need_weights=False)[0]
        batch, num_queries, channels = x.shape
        # (B, G*Q, C) -> (B*G, Q, C): attention within a group is attention within a row
        grouped = (batch * num_groups, num_queries // num_groups, channels)
        out = self.self_attn(
            q.reshape(grouped), k.reshape(grouped), x.reshape(grouped), need_weights=False
        )[0]
        return out.reshape(batch, num_queries, channels)

    def _cross(self, x: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, mask: Tensor):
        """Queries (with their positions) attend to the image (keys with positions)."""
        return self.cross_attn(
            x + query_pos, memory + pos, memory, key_padding_mask=mask, need_weights=False
        )[0]

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class Encoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, pre_norm: bool = False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model=d_model, pre_norm=pre_norm, **layer_kwargs)
            for _ in range(num_layers)
        )
        # pre-norm layers leave their output unnormalised: one final norm
        self.norm = nn.LayerNorm(d_model) if pre_norm else None

    def forward(self, src: Tensor, pos: Tensor, key_padding_mask: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src if self.norm is None else self.norm(src)


class Decoder(nn.Module):
    def __init__(self, num_layers: int, d_model: int, pre_norm: bool = False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(d_model=d_model, pre_norm=pre_norm, **layer_kwargs)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt, memory, pos, query_pos, memory_padding_mask, num_groups=1) -> Tensor:
        """Returns every layer's normalised output, ``(L, B, Q, C)``."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_padding_mask, num_groups)
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
        pre_norm: bool = False,
    ):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        layer = {"nhead": nhead, "dim_feedforward": dim_feedforward, "dropout": dropout}
        self.encoder = Encoder(num_encoder_layers, d_model, pre_norm=pre_norm, **layer)
        self.decoder = Decoder(num_decoder_layers, d_model, pre_norm=pre_norm, **layer)
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
        return self.decode(self.encode(src, padding_mask, pos), query_embed)

    def encode(self, src: Tensor, padding_mask: Tensor, pos: Tensor) -> Encoded:
        """The encoder over the flattened feature map (arguments as :meth:`forward`)."""
        src = src.flatten(2).transpose(1, 2)  # (B, S, C)
        pos = pos.flatten(2).transpose(1, 2)  # (B, S, C)
        key_padding_mask = padding_mask.flatten(1)  # (B, S)
        memory = self.encoder(src, pos, key_padding_mask)
        rows, cols = padding_mask.shape[-2:]
        return Encoded(memory, pos, key_padding_mask, (rows, cols))

    def decode(self, encoded: Encoded, query_embed: Tensor, num_groups: int = 1) -> Tensor:
        """The decoder's every layer, ``(L, B, Q, C)``, for ``query_embed (Q, C)``.

        ``num_groups`` > 1: the queries are that many equal groups whose
        self-attention stays within the group (training with query groups,
        see :mod:`detr_ray.model.training_detr`); 1 for DETR.
        """
        batch = encoded.memory.shape[0]
        query_pos = query_embed[None].expand(batch, -1, -1)  # (B, Q, C)
        tgt = torch.zeros_like(query_pos)
        return self.decoder(
            tgt, encoded.memory, encoded.pos, query_pos, encoded.padding_mask, num_groups
        )


class Encoded(NamedTuple):
    """The encoder's output: ``memory``, ``pos`` ``(B, S, C)``; ``padding_mask``
    ``(B, S)``; ``size`` the feature map's ``(h, w)``, ``S = h * w``."""

    memory: Tensor
    pos: Tensor
    padding_mask: Tensor
    size: tuple[int, int]
