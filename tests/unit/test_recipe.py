"""``detr-ray recipe``: its rules worked out by hand, and a whole recipe on generated sets."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from detr_ray.checkpoint import initialise_from
from detr_ray.cli import main
from detr_ray.config import load_config
from detr_ray.data.annotations import load_coco_json
from detr_ray.data.labels import LabelMap
from detr_ray.data.profile import profile_coco
from detr_ray.data.synthetic import generate
from detr_ray.errors import ConfigError
from detr_ray.model.build import build_model
from detr_ray.recipe.rules import (
    batch_and_lr,
    candidates,
    choose_family,
    epochs_for,
    family_models,
    queries_for,
    scale_for,
    small_model,
)


def _squares(tmp_path, side: int, image: int = 200, per_image: int = 3):
    """A file whose every object is a ``side`` x ``side`` box in ``image``-px squares."""
    data = {
        "images": [
            {"id": i, "file_name": f"{i}.png", "width": image, "height": image} for i in range(10)
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": per_image * i + k, "image_id": i, "category_id": 1, "bbox": [k, 5, side, side]}
            for i in range(10)
            for k in range(per_image)
        ],
    }
    path = tmp_path / f"squares{side}.json"
    path.write_text(json.dumps(data))
    return load_coco_json(path)


def test_the_scale_is_the_smallest_at_which_the_median_object_covers_a_cell(tmp_path):
    data = _squares(tmp_path, side=20, image=200)  # 20-px objects in 200-px images
    source = profile_coco(data)
    # at short side s the objects are 20 * s / 200 px: >= 8 from s = 80 -> 96 on the ladder;
    # >= 16 from s = 160 -> 160
    assert scale_for(data, source, 8)[0] == 96
    scale, why = scale_for(data, source, 16)
    assert scale == 160 and "the median object, 16 px, covers a 16-px cell" in why
    # never more than 2x the median image (400 px here): the largest allowed, said so
    scale, why = scale_for(data, source, 64)
    assert scale == 384 and "under one 64-px cell" in why


def test_detr_when_it_needs_no_larger_input_than_deformable_detr(tmp_path):
    big = _squares(tmp_path, side=60, image=200)  # 60 px at 200: 19 px at 64
    chosen, why = choose_family(candidates(big, profile_coco(big), gpu=False))
    assert (chosen.family, chosen.scale) == ("detr", 64) and why.startswith("DETR")
    small = _squares(tmp_path, side=12, image=200)  # DETR needs 16-px objects: 267 -> 320
    options = {c.family: c for c in candidates(small, profile_coco(small), gpu=False)}
    assert (options["detr"].scale, options["deformable_detr"].scale) == (320, 160)
    chosen, why = choose_family(list(options.values()))
    assert chosen.family == "deformable_detr" and "where DETR would need 320 px" in why


def test_queries_batch_lr_and_epochs_by_hand(tmp_path):
    crowded = _squares(tmp_path, side=10, per_image=40)
    assert queries_for(profile_coco(crowded))[0] == 60  # 1.5 x 40
    assert queries_for(profile_coco(_squares(tmp_path, side=10, per_image=2)))[0] == 5  # floor
    cpu = {"deformable": False, "small": True}  # DETR's small CPU model
    r50 = {"deformable": False, "small": False}  # DETR's ResNet-50 model
    batch, lr, backbone_lr, why = batch_and_lr(False, 2, fine_tune=False, **cpu)  # small model
    assert (batch, lr, backbone_lr) == (8, pytest.approx(6e-4), pytest.approx(6e-4))
    assert "3x the 0.0002" in why
    batch, lr, _, _ = batch_and_lr(False, 4, fine_tune=False, **cpu)  # 32 images: sqrt 2
    assert (batch, lr) == (8, pytest.approx(6e-4 * math.sqrt(2)))
    # fine-tuning: the model's rate, the pretrained backbone at a tenth of it
    batch, lr, backbone_lr, why = batch_and_lr(False, 2, fine_tune=True, **cpu)
    assert (batch, lr, backbone_lr) == (8, pytest.approx(6e-4), pytest.approx(6e-5))
    assert "backbone at a tenth" in why
    batch, lr, backbone_lr, why = batch_and_lr(True, 8, fine_tune=True, **r50)  # 32: sqrt 2
    assert (batch, lr) == (4, pytest.approx(2e-4 * math.sqrt(2))) and "3x" not in why
    assert backbone_lr == pytest.approx(2e-5 * math.sqrt(2))
    # Deformable DETR on a CPU: 4 a worker, 8 in all, so sqrt(1/2) of 6e-4
    batch, lr, _, why = batch_and_lr(False, 2, fine_tune=False, deformable=True, small=True)
    assert (batch, lr) == (4, pytest.approx(6e-4 / math.sqrt(2))) and "twice the updates" in why
    batch, lr, _, why = batch_and_lr(True, 4, fine_tune=False, deformable=True, small=False)
    assert (batch, lr) == (4, pytest.approx(2e-4)) and "twice" not in why  # a GPU's 4 anyway
    batch, lr, backbone_lr, _ = batch_and_lr(False, 2, fine_tune=True, deformable=True, small=True)
    assert (batch, lr, backbone_lr) == (
        4,
        pytest.approx(6e-4 / math.sqrt(2)),
        pytest.approx(6e-5 / math.sqrt(2)),
    )
    # the small models are the CPU presets; the GPU's ResNet-50 models are not
    assert all(small_model(m) for m in family_models(gpu=False).values())
    assert not any(small_model(m) for m in family_models(gpu=True).values())
    # 10 min, 5 evaluations of 12 s: 540 s x 20 images/s = 10,800 images = 2.7 epochs of 4000
    epochs, why = epochs_for(10, 20.0, 4000, 12.0)
    assert epochs == pytest.approx(2.7) and "2.7 epochs of 4000 images" in why
    with pytest.raises(ConfigError, match=r"--budget-minutes 1 trains about 0 images .* give at"):
        epochs_for(1, 20.0, 4000, 12.0)  # 5 evaluations of 12 s take the whole minute


def test_a_recipe_for_the_shapes_and_for_the_swarm(tmp_path, capsys, tiny_checkpoint):
    shapes = generate(tmp_path / "shapes", num_train=32, num_val=4, size=128, seed=1)
    swarm = generate(tmp_path / "swarm", num_train=16, num_val=4, size=128, seed=1, kind="swarm")

    def recipe(data, out, minutes="10", extra=(), probe_steps="1"):
        argv = ["recipe", "--train-ann", str(data.train_ann), "--train-images"]
        argv += [str(data.train_images), "--val-ann", str(data.val_ann), "--val-images"]
        argv += [str(data.val_images), "--budget-minutes", minutes, "--out", str(out)]
        return main([*argv, "--probe-steps", probe_steps, *extra])

    # (Every other recipe here times one step a candidate, for the suite's time.)
    assert recipe(shapes, tmp_path / "shapes.yaml", probe_steps="3") == 0
    printed = capsys.readouterr().out
    assert "objects per image" in printed and "probe: deformable_detr" in printed
    assert printed.count("(3 timed step(s))") == 2  # both families, each 3 steps timed
    config = shapes_config = load_config(tmp_path / "shapes.yaml")  # what detr-ray train reads
    assert config.model.family == "detr" and config.data.augmentation.val_scale == 64
    assert config.train.time_budget_minutes == 10 and config.train.dense_aux_weight == 4
    text = (tmp_path / "shapes.yaml").read_text()
    assert "#   objects per image" in text  # the profile's table in the header
    assert "  # the smallest input (short side) at which the median object" in text
    lines = text.splitlines()
    at = lines.index("  family: detr")
    assert lines[at - 2].startswith("  # DETR: its coarser map already covers")  # (wrapped)
    assert yaml.safe_load(text)["train"]["lr_drop_epochs"] == [round(0.8 * config.train.epochs)]
    at = lines.index(f"  epochs: {config.train.epochs}")  # the limit, said to be one
    assert f"{config.train.epochs} is a limit: the time budget ends the run" in " ".join(
        line.strip("# ") for line in lines[at - 3 : at]
    )

    assert recipe(swarm, tmp_path / "swarm.yaml") == 0
    config = load_config(tmp_path / "swarm.yaml")
    profile = profile_coco(load_coco_json(swarm.train_ann))
    assert config.model.family == "deformable_detr"
    assert config.model.num_queries == math.ceil(1.5 * profile.objects_per_image.p99)
    # the CPU's Deformable DETR: layer2 and layer3 of the trunk, 4 images a worker
    assert (config.model.backbone_stages, config.model.num_feature_levels) == (3, 4)
    assert config.train.batch_size == 4 and config.optim.lr == pytest.approx(6e-4 / math.sqrt(2))
    assert (shapes_config.train.batch_size, shapes_config.model.backbone_stages) == (8, 3)
    assert (config.matcher.cls_cost, config.loss.cls_weight) == (2.0, 2.0)  # the family's
    # Fine-tuning the tiny checkpoint (3 shape classes, 10 queries) to the swarm:
    # its model, a new class head (other categories), the swarm's queries (its
    # 10 start them), and the weights load into the model the config builds.
    checkpoint, source = tiny_checkpoint
    out = tmp_path / "fine.yaml"
    assert recipe(swarm, out, extra=["--init-from", str(checkpoint.parent)]) == 0
    fine = load_config(out)
    assert fine.init.init_from == str(checkpoint.parent) and fine.init.class_head == "reinit"
    assert fine.model.num_queries == config.model.num_queries > source.query_embed.num_embeddings
    assert fine.model.family == "detr" and fine.train.dense_aux_weight == 0
    # a small model, 8 a worker x 2 = 16: its 6e-4, the pretrained backbone a tenth
    assert (fine.optim.lr, fine.optim.backbone_lr) == (pytest.approx(6e-4), pytest.approx(6e-5))
    assert "a tenth of optim.lr: the pretrained backbone" in out.read_text()
    assert "query embeddings start the" in out.read_text()
    model = build_model(fine.model)
    labels = LabelMap.from_categories(load_coco_json(swarm.train_ann)["categories"])
    initialise_from(model, fine.init.init_from, labels, fine.init.class_head)
    kept = source.query_embed.num_embeddings
    assert torch.equal(model.query_embed.weight[:kept], source.query_embed.weight)
    # a budget that cannot hold one epoch is refused, naming the numbers
    capsys.readouterr()
    forced = ["--family", "deformable_detr"]
    assert recipe(swarm, tmp_path / "none.yaml", minutes="0.05", extra=forced) == 2
    assert "less than one epoch of 16" in capsys.readouterr().err
    assert not (tmp_path / "none.yaml").exists()
    assert recipe(swarm, tmp_path / "none.yaml", probe_steps="0") == 2
    assert "--probe-steps must be at least 1, got 0" in capsys.readouterr().err
    # --family: the family asked for, the only one probed
    assert recipe(shapes, tmp_path / "forced.yaml", extra=forced) == 0
    probes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("probe: ")]
    assert len(probes) == 1 and probes[0].startswith("probe: deformable_detr ")
    assert probes[0].endswith("(1 timed step(s))")  # --probe-steps 1
    assert load_config(tmp_path / "forced.yaml").model.family == "deformable_detr"
    assert "--family asked for it" in (tmp_path / "forced.yaml").read_text()
