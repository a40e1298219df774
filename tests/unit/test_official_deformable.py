"""Official Deformable-DETR checkpoints: their names, loading one, fine-tuning from one.

The official key names and shapes come from a skeleton of the official
module tree (``tests/support/official_deformable_layout.py``), not from the
converters under test.
"""

from __future__ import annotations

import argparse

import pytest
import torch

from detr_ray.checkpoint import checkpoint_kind, initialise_from, load_model
from detr_ray.config.model import ModelConfig
from detr_ray.data.labels import LabelMap
from detr_ray.model.build import build_model
from detr_ray.model.official_deformable import (
    from_official_deformable_state_dict,
    to_official_deformable_state_dict,
)

from tests.support.official_deformable_layout import official_deformable_keys

SIZES = dict(d_model=32, heads=4, layers=2, d_ffn=48, levels=4, points=2, queries=7)
MODES = {"plain": (False, False), "box-refine": (True, False), "two-stage": (True, True)}


def _config(refine: bool, two_stage: bool, num_classes: int = 91) -> ModelConfig:
    return ModelConfig(
        family="deformable_detr",
        backbone_depth=18,
        d_model=SIZES["d_model"],
        nhead=SIZES["heads"],
        num_encoder_layers=SIZES["layers"],
        num_decoder_layers=SIZES["layers"],
        dim_feedforward=SIZES["d_ffn"],
        num_queries=SIZES["queries"],
        num_feature_levels=SIZES["levels"],
        enc_points=SIZES["points"],
        dec_points=SIZES["points"],
        with_box_refine=refine,
        two_stage=two_stage,
        num_classes=num_classes,
    )


def _official_file(tmp_path, refine, two_stage, seed=0):
    """Our model saved in the official layout, with the official ``args``."""
    torch.manual_seed(seed)
    model = build_model(_config(refine, two_stage)).eval()
    with torch.no_grad():  # frozen batch norms with statistics that mean something
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias")):
                buffer.normal_(0, 0.1)
    args = argparse.Namespace(
        backbone="resnet18",
        dilation=False,
        nheads=SIZES["heads"],
        dropout=0.1,
        num_queries=SIZES["queries"],
        with_box_refine=refine,
        two_stage=two_stage,
        lr_backbone=2e-5,
        masks=False,
    )
    path = tmp_path / "r18_deformable_detr-checkpoint.pth"
    official = to_official_deformable_state_dict(model.state_dict())
    torch.save({"model": official, "args": args, "epoch": 49}, path)
    return path, model


@pytest.mark.parametrize("mode", MODES)
def test_our_names_are_the_official_names(mode):
    refine, two_stage = MODES[mode]
    ours = build_model(_config(refine, two_stage)).state_dict()
    official = to_official_deformable_state_dict(ours)
    expected = official_deformable_keys(
        depth=18,
        num_classes=91,
        refine=refine,
        two_stage=two_stage,
        backbone_channels=(128, 256, 512),
        **SIZES,
    )
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    back = from_official_deformable_state_dict(official)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)


@pytest.mark.parametrize("mode", ["plain", "two-stage"])
def test_an_official_checkpoint_runs_as_the_model_it_holds(tmp_path, mode):
    path, model = _official_file(tmp_path, *MODES[mode])
    assert checkpoint_kind(torch.load(path, weights_only=False)) == "official-deformable"
    loaded = load_model(path)
    assert loaded.model_config == _config(*MODES[mode])
    assert loaded.label_map.category_id(18) == 18 and loaded.label_map.name(18) == "dog"
    images = torch.randn(2, 3, 96, 80)
    mask = torch.zeros(2, 96, 80, dtype=torch.bool)
    mask[1, :, 60:] = True
    with torch.no_grad():
        expected, got = model(images, mask), loaded.model(images, mask)
    torch.testing.assert_close(got.cls_logits, expected.cls_logits, rtol=0, atol=0)
    torch.testing.assert_close(got.bbox_preds, expected.bbox_preds, rtol=0, atol=0)


def test_fine_tuning_from_it_keeps_every_class_head_row_by_category_id(tmp_path):
    path, source = _official_file(tmp_path, True, False)
    target = build_model(_config(True, False, num_classes=2))
    labels = LabelMap((18, 3), ("dog", "car"))  # COCO ids 18 and 3, in this order
    said = initialise_from(target, path, labels, class_head="keep")
    assert "official Deformable-DETR checkpoint" in said
    for layer in range(SIZES["layers"]):  # box refinement: a class head per layer
        w, b = source.class_embed[layer].weight, source.class_embed[layer].bias
        assert torch.equal(target.class_embed[layer].weight, torch.stack([w[18], w[3]]))
        assert torch.equal(target.class_embed[layer].bias, torch.stack([b[18], b[3]]))
    assert torch.equal(target.level_embed, source.level_embed)
    fresh = build_model(_config(True, False, num_classes=2))
    before = fresh.class_embed[0].weight.detach().clone()
    initialise_from(fresh, path, LabelMap((500, 501), ("x", "y")), class_head="reinit")
    assert torch.equal(fresh.class_embed[0].weight, before)
    assert torch.equal(fresh.query_embed.weight, source.query_embed.weight)
