"""HF transformers' detectors built to a detr-ray ``ModelConfig``, for side-by-side runs.

HF's own ResNet (no timm, no downloads), the official dropout sites, the
costs and loss weights of each family's reference, auxiliary losses on, the
pure-PyTorch deformable attention. HF's own-ResNet path freezes the *whole*
backbone (its freezing rule looks for "stage.1", which HF ResNet's
"stages.1" never contains): the like-for-like detr-ray model trains no
backbone stage either (``trainable_backbone_stages=0``).
"""

from __future__ import annotations


def hf_resnet_config(depth: int, levels: bool):
    """HF's ResNet of ``depth`` returning ``layer4`` (DETR) or ``layer2``-``layer4``."""
    from transformers import ResNetConfig

    deep = depth >= 50
    depths = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    return ResNetConfig(
        depths=depths,
        layer_type="bottleneck" if deep else "basic",
        hidden_sizes=[256, 512, 1024, 2048] if deep else [64, 128, 256, 512],
        out_features=["stage2", "stage3", "stage4"] if levels else ["stage4"],
    )


def hf_twin(model_config, num_labels: int):
    """``DetrForObjectDetection`` or ``DeformableDetrForObjectDetection`` (train
    mode) with ``model_config``'s architecture (a detr-ray ``ModelConfig``)."""
    import transformers

    cfg = model_config
    common = dict(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=hf_resnet_config(cfg.backbone_depth, levels=cfg.deformable),
        num_labels=num_labels,
        num_queries=cfg.num_queries,
        d_model=cfg.d_model,
        encoder_layers=cfg.num_encoder_layers,
        decoder_layers=cfg.num_decoder_layers,
        encoder_ffn_dim=cfg.dim_feedforward,
        decoder_ffn_dim=cfg.dim_feedforward,
        encoder_attention_heads=cfg.nhead,
        decoder_attention_heads=cfg.nhead,
        auxiliary_loss=True,
        # the official repositories' dropout sites (HF's defaults turn two of them off)
        dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
    )
    if not cfg.deformable:
        config = transformers.DetrConfig(**common)
        return transformers.DetrForObjectDetection(config).train()
    config = transformers.DeformableDetrConfig(
        **common,
        num_feature_levels=cfg.num_feature_levels,
        encoder_n_points=cfg.enc_points,
        decoder_n_points=cfg.dec_points,
        with_box_refine=cfg.with_box_refine,
        two_stage=cfg.two_stage,
        two_stage_num_proposals=cfg.num_queries,
        disable_custom_kernels=True,
        class_cost=2,
        bbox_cost=5,
        giou_cost=2,
        bbox_loss_coefficient=5,
        giou_loss_coefficient=2,
        focal_alpha=0.25,
    )
    return transformers.DeformableDetrForObjectDetection(config).train()


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
