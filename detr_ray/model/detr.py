"""The DETR detector: backbone -> 1x1 projection -> transformer -> heads."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from detr_ray.model.backbone import ResNetBackbone
from detr_ray.model.transformer import Encoded, Transformer


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + hidden, hidden + [output_dim])
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    """DETR: a set of ``Q`` box predictions per image, from every decoder layer.

    ``model(images, padding_mask)`` with ``images (B, 3, H, W)`` (a padded
    batch) and ``padding_mask (B, H, W)`` bool (True = padding) returns

    - ``cls_scores (L, B, Q, K + 1)``: class logits, background last;
    - ``bbox_preds (L, B, Q, 4)``: normalised cxcywh in ``[0, 1]``, relative
      to each image's unpadded extent,

    which is exactly what :class:`~detr_ray.criterion.set_loss.SetCriterion` takes.
    """

    sigmoid_classes = False  # K + 1 softmax logits, background last (see DeformableDETR's)

    def __init__(
        self,
        backbone: ResNetBackbone,
        position_encoding: nn.Module,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
    ):
        super().__init__()
        d_model = transformer.d_model
        self.backbone = backbone
        self.position_encoding = position_encoding
        self.input_proj = nn.Conv2d(backbone.num_channels, d_model, kernel_size=1)
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.box_head = MLP(d_model, d_model, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries

    def forward(self, images: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.decode(self.encode(images, padding_mask), self.query_embed.weight)

    def encode(self, images: Tensor, padding_mask: Tensor) -> Encoded:
        """Backbone, projection and encoder: the image as ``S = h * w`` tokens."""
        features = self.backbone(images)  # (B, C_backbone, h, w)
        # nearest resize of the pixel mask to the feature map, as the reference
        mask = F.interpolate(padding_mask[None].float(), size=features.shape[-2:])[0].bool()
        pos = self.position_encoding(mask).to(features.dtype)  # (B, C, h, w)
        return self.transformer.encode(self.input_proj(features), mask, pos)

    def decode(
        self, encoded: Encoded, query_embed: Tensor, num_groups: int = 1
    ) -> tuple[Tensor, Tensor]:
        """Decoder and heads for ``query_embed (Q', C)``: ``(L, B, Q', K + 1)``
        logits and ``(L, B, Q', 4)`` boxes. With ``num_groups`` > 1 the queries
        are groups that do not attend to each other (training with query groups)."""
        hidden = self.transformer.decode(encoded, query_embed, num_groups)
        cls_scores = self.class_head(hidden)  # (L, B, Q, K+1)
        bbox_preds = self.box_head(hidden).sigmoid()  # (L, B, Q, 4) cxcywh
        return cls_scores, bbox_preds
