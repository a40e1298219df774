"""The Deformable DETR detector: multi-scale backbone, projections, deformable transformer, heads.

``model(images, padding_mask)`` with ``images (B, 3, H, W)`` (a padded batch)
and ``padding_mask (B, H, W)`` bool (True = padding) returns

- ``cls_logits (L, B, Q, K)``: one sigmoid logit per class (no background
  class: a query that is no object scores low on every class);
- ``bbox_preds (L, B, Q, 4)``: normalised cxcywh in ``[0, 1]``,

for each of the ``L`` decoder layers. Levels: the backbone's ``layer2``-
``layer4`` maps (strides 8-32), each projected to the model width by a 1x1
convolution and group norm, then extra levels by stride-2 3x3 convolutions
of the last map (stride 64 for the fourth). Each level's tokens carry the
sine position encoding plus a learned level embedding.

Each query starts from a learned embedding, split into its position and its
content; a linear map of the position gives its reference point. Each
decoder layer's heads predict boxes as offsets (in logit space) from the
reference the layer started from. With ``with_box_refine`` every layer has
its own heads, and its box is the next layer's reference; otherwise one pair
of heads serves every layer and the references stay points.

With ``two_stage`` the queries come from the encoder instead: every token
is a proposal (a box around its pixel, larger on coarser levels) scored and
refined by one more pair of heads; the ``Q`` best become the decoder's
reference boxes, and their sine embedding its queries. Those encoder outputs
are returned too, for their loss.

Names follow the official Deformable-DETR repository.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detr_ray.model.backbone import ResNetBackbone
from detr_ray.model.deformable.attention import DeformableAttention
from detr_ray.model.deformable.sampling import LevelShapes
from detr_ray.model.deformable.transformer import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    inverse_sigmoid,
    valid_ratios,
)
from detr_ray.model.detr import MLP
from detr_ray.model.position_encoding import SinePositionalEncoding

PRIOR_PROB = 0.01  # the class bias: every class starts at sigmoid = 0.01 (focal loss)
PROPOSAL_VALID = (0.01, 0.99)  # proposals with a coordinate outside are never chosen


class EncodedLevels(NamedTuple):
    """The encoder's output: ``memory (B, S, C)`` over every level's tokens,
    ``padding_mask (B, S)`` (True = padding), ``spatial_shapes (L, 2)`` long
    ``(H_l, W_l)``, the same as Python ints in ``level_shapes`` (loops over
    levels read no device), and ``valid_ratios (B, L, 2)`` ``(w, h)``."""

    memory: Tensor
    padding_mask: Tensor
    spatial_shapes: Tensor
    level_shapes: tuple[tuple[int, int], ...]
    valid_ratios: Tensor


def _extra_level(proj: nn.Module, x: Tensor) -> Tensor:
    """An extra level's strided 3x3 projection of ``x`` ``(B, C, H, W)``.

    Under CPU bfloat16 autocast it runs in float32: torch 2.13's CPU bfloat16
    kernel for a stride-2 3x3 convolution returns wrong values, NaN at times,
    when the input map is one or two cells wide (seen on an AMX Xeon; small
    inputs such as the CPU recipes' give such maps). This level is the
    smallest map, so float32 costs little.
    """
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return proj(x.float())
    return proj(x)


class DeformableOutput(NamedTuple):
    """``cls_logits (L, B, Q, K)``, ``bbox_preds (L, B, Q, 4)``; with two stages
    also the encoder's proposals, ``enc_logits (B, S, K)``, ``enc_boxes (B, S, 4)``."""

    cls_logits: Tensor
    bbox_preds: Tensor
    enc_logits: Tensor | None = None
    enc_boxes: Tensor | None = None


def proposal_pos_embed(boxes_logit: Tensor, num_feats: int, temperature: float = 10000) -> Tensor:
    """``(B, Q, 4 * num_feats)``: the sine embedding of boxes given in logit space
    (each coordinate's sigmoid scaled to ``[0, 2 pi]``, sin/cos interleaved)."""
    channel = torch.arange(num_feats, dtype=boxes_logit.dtype, device=boxes_logit.device)
    dim_t = temperature ** (2 * torch.div(channel, 2, rounding_mode="floor") / num_feats)
    pos = boxes_logit.sigmoid()[..., None] * (2 * math.pi) / dim_t  # (B, Q, 4, F)
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)


def encoder_proposals(
    memory: Tensor, padding_mask: Tensor, level_shapes: LevelShapes
) -> tuple[Tensor, Tensor]:
    """Every token as a proposal: ``(memory with padded and invalid tokens
    zeroed (B, S, C), proposals (B, S, 4) cxcywh in logit space)``.

    A token's proposal is centred on its pixel, normalised by its image's
    valid part of the level, of side ``0.05 * 2^level``; proposals over
    padding or with a coordinate outside ``(0.01, 0.99)`` are ``+inf``.
    """
    n = memory.shape[0]
    proposals, start = [], 0
    for level, (h, w) in enumerate(level_shapes):  # L is 4: a short loop
        mask = padding_mask[:, start : start + h * w].view(n, h, w)
        start += h * w
        valid = torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)  # (B, 2)
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=memory.dtype, device=memory.device),
            torch.arange(w, dtype=memory.dtype, device=memory.device),
            indexing="ij",
        )
        centres = (torch.stack([xs, ys], -1)[None] + 0.5) / valid[:, None, None].to(memory.dtype)
        sizes = torch.full_like(centres, 0.05 * 2.0**level)
        proposals.append(torch.cat([centres, sizes], -1).view(n, -1, 4))
    boxes = torch.cat(proposals, 1)
    low, high = PROPOSAL_VALID
    valid = ((boxes > low) & (boxes < high)).all(-1, keepdim=True) & ~padding_mask[..., None]
    logits = torch.log(boxes / (1 - boxes)).masked_fill(~valid, float("inf"))
    return memory.masked_fill(~valid, 0.0), logits


def _last_linear(mlp: nn.Module) -> nn.Linear:
    """The output layer of a box head (an :class:`MLP`)."""
    last = mlp.layers[-1]  # type: ignore[index]
    assert isinstance(last, nn.Linear)
    return last


class DeformableDETR(nn.Module):
    """Deformable DETR (Zhu et al., 2021); box refinement and two stages are options.

    ``model(images, padding_mask)`` is ``model.decode(model.encode(images,
    padding_mask))`` (training-only heads read the encoded tokens between the two).

    Args:
        backbone: its :meth:`~ResNetBackbone.forward_levels` maps feed the levels.
        num_classes: ``K`` (sigmoid logits, no background).
        num_queries: ``Q`` (300 in the official recipe).
        num_feature_levels: ``L_f``; levels past the backbone's are stride-2 convs.
        dim, ffn_dim, dropout, num_heads: the transformer's width and layers.
        enc_layers, dec_layers: encoder and decoder depth.
        enc_points, dec_points: sampled points per head and level.
        with_box_refine: each decoder layer refines the previous layer's box.
        two_stage: the queries are the encoder's ``num_queries`` best proposals.
    """

    sigmoid_classes = True  # K sigmoid logits, no background class (see DETR's)

    def __init__(
        self,
        backbone: ResNetBackbone,
        num_classes: int,
        num_queries: int = 300,
        num_feature_levels: int = 4,
        dim: int = 256,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        num_heads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        enc_points: int = 4,
        dec_points: int = 4,
        with_box_refine: bool = False,
        two_stage: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.dim = num_classes, dim
        self.num_queries, self.num_feature_levels = num_queries, num_feature_levels
        self.with_box_refine, self.two_stage = with_box_refine, two_stage
        self.position_encoding = SinePositionalEncoding(dim // 2, normalize=True, offset=-0.5)
        channels = backbone.level_channels[-num_feature_levels:]
        self._backbone_levels = len(channels)
        convs = [nn.Conv2d(c, dim, 1) for c in channels]
        in_channels = backbone.level_channels[-1]
        for _ in range(num_feature_levels - len(channels)):
            convs.append(nn.Conv2d(in_channels, dim, 3, 2, 1))
            in_channels = dim
        for conv in convs:
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]  # Conv2d has one by default
        self.input_proj = nn.ModuleList(nn.Sequential(c, nn.GroupNorm(32, dim)) for c in convs)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, dim))
        if two_stage:  # the queries come from the encoder's proposals
            self.enc_output = nn.Linear(dim, dim)
            self.enc_output_norm = nn.LayerNorm(dim)
            self.pos_trans = nn.Linear(2 * dim, 2 * dim)
            self.pos_trans_norm = nn.LayerNorm(2 * dim)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * dim)  # (position, content)
            self.reference_points = nn.Linear(dim, 2)
        sizes = (dim, ffn_dim, dropout, num_feature_levels, num_heads)
        self.encoder = DeformableEncoder(DeformableEncoderLayer(*sizes, enc_points), enc_layers)
        self.decoder = DeformableDecoder(DeformableDecoderLayer(*sizes, dec_points), dec_layers)
        self._init_transformer()
        class_embed = nn.Linear(dim, num_classes)
        bbox_embed = MLP(dim, dim, 4, 3)
        nn.init.constant_(class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        box_out = _last_linear(bbox_embed)
        nn.init.zeros_(box_out.weight)
        nn.init.zeros_(box_out.bias)
        nn.init.constant_(box_out.bias[2:], -2.0)  # small boxes at first
        num_heads_pairs = dec_layers + (1 if two_stage else 0)  # the last: the encoder's
        if with_box_refine:  # one pair of heads per layer; the boxes feed the decoder
            self.class_embed = nn.ModuleList(
                copy.deepcopy(class_embed) for _ in range(num_heads_pairs)
            )
            self.bbox_embed = nn.ModuleList(
                copy.deepcopy(bbox_embed) for _ in range(num_heads_pairs)
            )
            self.decoder.bbox_embed = self.bbox_embed
        else:  # the same pair for every layer
            self.class_embed = nn.ModuleList([class_embed] * num_heads_pairs)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_heads_pairs)
        if two_stage:  # proposals carry their sizes: the heads start from them
            for head in self.bbox_embed:
                nn.init.zeros_(_last_linear(head).bias[2:])

    def _init_transformer(self) -> None:
        """The official transformer init: xavier for every matrix, then each
        deformable attention's own, the reference-point map and level embeddings."""
        parts = [self.encoder, self.decoder]
        if self.two_stage:
            parts += [self.enc_output, self.pos_trans]
        for part in parts:
            for p in part.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            for module in part.modules():
                if isinstance(module, DeformableAttention):
                    module.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def levels(self, images: Tensor, padding_mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The ``L_f`` projected maps ``(B, C, H_l, W_l)`` and their padding masks."""
        features = self.backbone.forward_levels(images)[-self._backbone_levels :]
        maps = [proj(f) for proj, f in zip(self.input_proj, features, strict=False)]
        # extra levels: the first from the backbone's last map, each next from the previous
        for proj in self.input_proj[len(features) :]:
            maps.append(
                _extra_level(proj, features[-1] if len(maps) == len(features) else maps[-1])
            )
        masks = [
            F.interpolate(padding_mask[None].float(), size=m.shape[-2:])[0].bool() for m in maps
        ]
        return maps, masks

    def forward(self, images: Tensor, padding_mask: Tensor) -> DeformableOutput:
        return self.decode(self.encode(images, padding_mask))

    def encode(self, images: Tensor, padding_mask: Tensor) -> EncodedLevels:
        """Backbone, projections and encoder: every level's tokens, encoded."""
        maps, masks = self.levels(images, padding_mask)
        level_shapes = tuple((int(m.shape[-2]), int(m.shape[-1])) for m in maps)
        shapes = torch.tensor(level_shapes, device=images.device)
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)  # (B, S, C)
        pos = torch.cat(
            [
                self.position_encoding(mask).to(m.dtype).flatten(2).transpose(1, 2)
                + self.level_embed[level]
                for level, (m, mask) in enumerate(zip(maps, masks, strict=True))
            ],
            1,
        )
        token_mask = torch.cat([mask.flatten(1) for mask in masks], 1)  # (B, S)
        ratios = valid_ratios(masks).to(tokens.dtype)
        memory = self.encoder(tokens, pos, shapes, ratios, token_mask, level_shapes)
        return EncodedLevels(memory, token_mask, shapes, level_shapes, ratios)

    def decode(self, encoded: EncodedLevels) -> DeformableOutput:
        """Queries (learned, or the encoder's best proposals), decoder and heads."""
        memory, token_mask, shapes, level_shapes, ratios = encoded
        n = memory.shape[0]
        dim = memory.shape[-1]
        enc_logits = enc_boxes = None
        if self.two_stage:
            tokens = sum(h * w for h, w in level_shapes)
            if tokens < self.num_queries:
                raise ValueError(
                    f"a two-stage Deformable DETR chooses its {self.num_queries} queries among "
                    f"the encoder's tokens, and these images give {tokens}: use larger images "
                    "or fewer queries (model.num_queries)"
                )
            proposal_memory, proposals = encoder_proposals(memory, token_mask, level_shapes)
            proposal_memory = self.enc_output_norm(self.enc_output(proposal_memory))
            enc_logits = self.class_embed[-1](proposal_memory)  # (B, S, K)
            enc_coords = self.bbox_embed[-1](proposal_memory) + proposals  # logit space
            enc_boxes = enc_coords.sigmoid()
            best = enc_logits[..., 0].topk(self.num_queries, dim=1).indices  # (B, Q)
            chosen = enc_coords.gather(1, best[..., None].expand(-1, -1, 4)).detach()
            reference = chosen.sigmoid()  # (B, Q, 4) boxes
            embedded = self.pos_trans_norm(self.pos_trans(proposal_pos_embed(chosen, dim // 2)))
            query_pos, queries = embedded.split(dim, dim=2)
        else:
            query_pos, queries = self.query_embed.weight.split(dim, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(n, -1, -1)
            queries = queries.unsqueeze(0).expand(n, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        hidden, references = self.decoder(
            queries, query_pos, reference, memory, shapes, ratios, token_mask, level_shapes
        )
        logits, boxes = [], []
        for layer, (h, ref) in enumerate(zip(hidden, references, strict=True)):
            delta = self.bbox_embed[layer](h)
            ref = inverse_sigmoid(ref)
            if ref.shape[-1] == 4:
                delta = delta + ref
            else:
                delta = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
            logits.append(self.class_embed[layer](h))
            boxes.append(delta.sigmoid())
        return DeformableOutput(torch.stack(logits), torch.stack(boxes), enc_logits, enc_boxes)
