"""The warnings at training start: they fire on data that does not suit the model,
and stay quiet on the demo's shapes."""

from __future__ import annotations

import json

from detr_ray.config import load_config
from detr_ray.config.model import preset_config
from detr_ray.data.annotations import load_coco_json
from detr_ray.data.profile import profile_coco
from detr_ray.data.synthetic import generate
from detr_ray.train.data_fit import data_fit_warnings, finest_stride, training_scale

from tests.unit.test_config import CONFIGS


def test_the_finest_cell_of_each_model():
    assert finest_stride(preset_config("detr_r50")) == 32
    assert finest_stride(preset_config("detr_r50_dc5")) == 16
    assert finest_stride(preset_config("detr_r18_small", backbone_stages=3)) == 16
    assert finest_stride(preset_config("deformable_detr_r50")) == 8
    assert finest_stride(preset_config("deformable_detr_r50", num_feature_levels=1)) == 32
    assert finest_stride(preset_config("deformable_detr_r18_small", backbone_stages=3)) == 8


def test_quiet_on_the_demo_and_firing_on_data_that_does_not_suit_it(tmp_path):
    demo = load_config(CONFIGS / "shapes_tiny.yaml")
    scale = training_scale(demo.data.augmentation)
    assert scale == (64, 107)
    shapes = generate(tmp_path / "shapes", num_train=64, num_val=2, size=128, seed=0)
    profile = profile_coco(load_coco_json(shapes.train_ann), *scale)
    assert data_fit_warnings(profile, demo.model) == []
    # the swarm at the demo's scale and model: small, crowded, long-tailed
    swarm = generate(tmp_path / "swarm", num_train=12, num_val=2, size=128, seed=0, kind="swarm")
    profile = profile_coco(load_coco_json(swarm.train_ann), *scale)
    small, crowded, rare = data_fit_warnings(profile, demo.model)
    assert "half of the training objects are under" in small and "(16 px)" in small
    assert "model.family: deformable_detr" in small
    counts = json.loads(swarm.train_ann.read_text())["annotations"]
    per_image = {}
    for ann in counts:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    over = sum(1 for n in per_image.values() if n > demo.model.num_queries)
    assert crowded.startswith(
        f"{over} training image(s) hold more objects than model.num_queries (5"
    )
    assert "class(es) have fewer than 10 training objects" in rare
    # a Deformable DETR at a larger scale with enough queries: only the rare classes remain
    deformable = preset_config("deformable_detr_r18_small", num_queries=100)
    profile = profile_coco(load_coco_json(swarm.train_ann), 128, 128)
    (only,) = data_fit_warnings(profile, deformable)
    assert only.startswith(f"{len(profile.rare_classes(10))} class(es)")
