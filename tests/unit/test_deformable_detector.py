"""The Deformable DETR detector against HF transformers' with the same weights.

HF's ``DeformableDetrForObjectDetection`` (its own ResNet, the pure-PyTorch
attention) with random weights everywhere, renamed by
:func:`detr_ray.model.hf_names.hf_deformable_detr_names`: the same logits and
boxes from every decoder layer, in float64, on a padded batch, with and
without box refinement, and in two stages (queries from the encoder's
proposals). Also the official initialisation of the heads, and the top-k
post-processing against HF's image processor.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import transformers

from detr_ray.model.backbone import ResNetBackbone
from detr_ray.model.deformable.detector import DeformableDETR
from detr_ray.model.hf_names import deformable_heads, hf_deformable_detr_names

NUM_CLASSES, QUERIES, DIM, LAYERS = 5, 7, 32, 2


MODES = {"plain": (False, False), "box-refine": (True, False), "two-stage": (True, True)}


def _hf(refine, two_stage=False):
    backbone = transformers.ResNetConfig(
        depths=[2, 2, 2, 2],
        layer_type="basic",
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
        out_features=["stage2", "stage3", "stage4"],
    )
    config = transformers.DeformableDetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=backbone,
        num_labels=NUM_CLASSES,
        num_queries=QUERIES,
        d_model=DIM,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_n_points=2,
        decoder_n_points=2,
        num_feature_levels=4,
        with_box_refine=refine,
        two_stage=two_stage,
        two_stage_num_proposals=QUERIES,
        auxiliary_loss=True,
        disable_custom_kernels=True,
    )
    torch.manual_seed(0)
    model = transformers.DeformableDetrForObjectDetection(config).double().eval()
    with torch.no_grad():  # random everywhere, the frozen norms' statistics too
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.uniform_(0.5, 1.5)
                else:
                    tensor.normal_(0, 0.1)
    return model


def _ours(refine, two_stage=False):
    backbone = ResNetBackbone(depth=18, norm="frozen")
    return (
        DeformableDETR(
            backbone,
            NUM_CLASSES,
            num_queries=QUERIES,
            num_feature_levels=4,
            dim=DIM,
            ffn_dim=48,
            num_heads=4,
            enc_layers=LAYERS,
            dec_layers=LAYERS,
            enc_points=2,
            dec_points=2,
            with_box_refine=refine,
            two_stage=two_stage,
        )
        .double()
        .eval()
    )


@pytest.mark.parametrize("mode", MODES)
def test_it_equals_hf_deformable_detr_with_the_same_weights(mode):
    refine, two_stage = MODES[mode]
    theirs = _hf(refine, two_stage)
    ours = _ours(refine, two_stage)
    renamed = hf_deformable_detr_names(theirs.state_dict())
    heads = LAYERS + (1 if two_stage else 0)
    missing, unexpected = ours.load_state_dict(
        deformable_heads(renamed, heads, refine), strict=False
    )
    assert not unexpected and not [k for k in missing if "num_batches" not in k], missing
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 80, generator=g, dtype=torch.float64)
    padding = torch.zeros(2, 64, 80, dtype=torch.bool)
    padding[1, 48:] = True  # image 1 is 48 x 56 inside the padded batch
    padding[1, :, 56:] = True
    logits, boxes, enc_logits, enc_boxes = ours(images, padding)
    # HF embeds the chosen proposals in float32 (against overflow in fp16)
    atol = 1e-6 if two_stage else 1e-9
    labels = [  # HF returns the earlier layers' outputs only beside a loss
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]).double()}
    ] * 2
    out = theirs(pixel_values=images, pixel_mask=(~padding).long(), labels=labels)
    assert logits.shape == (LAYERS, 2, QUERIES, NUM_CLASSES) and boxes.shape[-1] == 4
    torch.testing.assert_close(logits[-1], out.logits, rtol=0, atol=atol)
    torch.testing.assert_close(boxes[-1], out.pred_boxes, rtol=0, atol=atol)
    if two_stage:  # the encoder's proposals, scored and refined
        torch.testing.assert_close(enc_logits, out.enc_outputs_class, rtol=0, atol=atol)
        hf_boxes = out.enc_outputs_coord_logits.sigmoid()
        torch.testing.assert_close(enc_boxes, hf_boxes, rtol=0, atol=atol)
    else:
        assert enc_logits is None and enc_boxes is None
    assert len(out.auxiliary_outputs) == LAYERS - 1
    for layer, aux in enumerate(out.auxiliary_outputs):
        torch.testing.assert_close(logits[layer], aux["logits"], rtol=0, atol=atol)
        torch.testing.assert_close(boxes[layer], aux["pred_boxes"], rtol=0, atol=atol)


def test_the_heads_start_at_the_official_priors():
    model = _ours(refine=True).float()
    prior = -math.log((1 - 0.01) / 0.01)
    for head in model.class_embed:
        assert torch.allclose(head.bias, torch.full_like(head.bias, prior))
    last = model.bbox_embed[0].layers[-1]
    assert not last.weight.any() and last.bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    assert model.decoder.bbox_embed is model.bbox_embed  # refinement feeds the decoder
    shared = _ours(refine=False)
    assert shared.class_embed[0] is shared.class_embed[1] and shared.decoder.bbox_embed is None


def test_sigmoid_postprocessing_equals_hf_image_processors_top_k():
    from transformers import DeformableDetrImageProcessor
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrObjectDetectionOutput,
    )

    from detr_ray.model.postprocess import postprocess_sigmoid

    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 30, 6, generator=g)
    boxes = torch.rand(2, 30, 4, generator=g) * 0.5 + 0.1
    sizes = torch.tensor([[480, 640], [300, 200]])
    ours = postprocess_sigmoid(logits, boxes, sizes, top_k=100, score_threshold=0.3)
    outputs = DeformableDetrObjectDetectionOutput(logits=logits, pred_boxes=boxes)
    theirs = DeformableDetrImageProcessor().post_process_object_detection(
        outputs, threshold=0.3, target_sizes=sizes, top_k=100
    )
    for mine, hf in zip(ours, theirs, strict=True):
        assert len(mine["scores"]) > 10  # a real ranking, not an empty one
        torch.testing.assert_close(mine["scores"], hf["scores"])
        assert mine["labels"].tolist() == hf["labels"].tolist()
        torch.testing.assert_close(mine["boxes_xyxy"], hf["boxes"])
    # one query can be several detections (30 queries x 6 classes ranked together):
    # fewer distinct boxes than detections
    first = ours[0]
    assert len({tuple(b) for b in first["boxes_xyxy"].tolist()}) < len(first["scores"])


def test_the_official_r50_preset_has_hf_deformable_detrs_parameters():
    from detr_ray.config.model import PRESETS
    from detr_ray.model.build import build_model

    for name, refine, two_stage in [
        ("deformable_detr_r50", False, False),
        ("deformable_detr_r50_two_stage", True, True),
    ]:
        ours = build_model(dataclasses.replace(PRESETS[name], num_classes=91))
        theirs = transformers.DeformableDetrForObjectDetection(
            transformers.DeformableDetrConfig(
                use_timm_backbone=False,
                use_pretrained_backbone=False,
                backbone=None,
                backbone_config=transformers.ResNetConfig(
                    out_features=["stage2", "stage3", "stage4"]
                ),
                num_labels=91,
                with_box_refine=refine,
                two_stage=two_stage,
            )
        )
        count = sum(p.numel() for p in ours.parameters())
        # HF ties the two-stage decoder's heads to the detector's: each counted once
        assert count == sum(p.numel() for p in theirs.parameters()), name


def test_the_extra_level_under_cpu_bfloat16_is_its_float32_convolution_on_narrow_maps():
    # torch 2.13's CPU bfloat16 kernel gets a stride-2 3x3 conv wrong on maps one
    # or two cells wide (AMX Xeons); the CPU recipes' small inputs give such maps.
    # Under autocast the extra level's conv must still give, for the map it was
    # given, float32's answer up to bfloat16 rounding.
    torch.manual_seed(0)
    model = DeformableDETR(ResNetBackbone(depth=18, norm="frozen"), NUM_CLASSES, dim=128)
    conv = model.input_proj[-1][0]  # the extra level's strided 3x3 conv
    seen = []
    conv.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    for hw in [(96, 64), (128, 64), (160, 64)]:  # C5 maps 3x2, 4x2, 5x2
        seen.clear()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.levels(torch.randn(2, 3, *hw), torch.zeros(2, *hw, dtype=torch.bool))
        ((c5, out),) = seen
        assert c5.shape[-1] <= 2
        with torch.no_grad():
            exact = torch.nn.functional.conv2d(
                c5.double(), conv.weight.double(), conv.bias.double(), stride=2, padding=1
            )
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), exact, atol=0.05, rtol=0.02)


def test_a_three_stage_trunk_gives_four_levels_at_strides_8_to_64_without_layer4():
    # The recipe's CPU Deformable DETR: layer2 and layer3 (strides 8, 16), then
    # two stride-2 convs (32, 64), the first from layer3's 256 channels.
    backbone = ResNetBackbone(depth=18, norm="group", num_stages=3)
    model = DeformableDETR(backbone, NUM_CLASSES, dim=128)
    assert not any(name.startswith("backbone.layer4") for name, _ in model.named_parameters())
    assert [p[0].in_channels for p in model.input_proj] == [128, 256, 256, 128]
    with torch.no_grad():
        maps, masks = model.levels(
            torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool)
        )
    # ceil(64 / s) x ceil(96 / s): each stride-2 step rounds up (padding 1)
    assert [tuple(m.shape[-2:]) for m in maps] == [(8, 12), (4, 6), (2, 3), (1, 2)]
    assert [tuple(m.shape[-2:]) for m in masks] == [(8, 12), (4, 6), (2, 3), (1, 2)]
