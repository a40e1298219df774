"""The Ray-free parts of training: schedule, optimiser groups, seeds."""

import pytest

from detr_ray.config import ExperimentConfig
from detr_ray.model.build import build_preset
from detr_ray.train.optimizer import build_optimizer
from detr_ray.train.schedule import lr_factor
from detr_ray.train.seeds import epoch_seed


def _config(optim=None, **train):
    return ExperimentConfig.from_dict(
        {"train": {"batch_size": 2, **train}, "scaling": {"num_workers": 2}, "optim": optim or {}}
    )


def test_lr_factor_warmup_and_drops_by_hand():
    # 2 workers x batch 2: a full-size step is 4 images; warm-up over 4 such steps
    config = _config(warmup_steps=4, lr_drop_epochs=[2, 3], lr_gamma=0.1)
    assert [lr_factor(4 * s, 0, 2, config) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(1000, 1, 2, config) == 1.0  # still epoch 1 (0-based)
    assert lr_factor(1000, 2, 2, config) == pytest.approx(0.1)  # epoch 2
    assert lr_factor(1000, 3, 2, config) == pytest.approx(0.01)  # epoch 3


def test_with_a_time_budget_a_drop_comes_at_its_share_of_the_budget_or_its_epoch():
    config = _config(epochs=10, lr_drop_epochs=[8], lr_gamma=0.1, time_budget_minutes=20.0)
    assert lr_factor(0, 1, 2, config, budget_fraction=0.79) == 1.0
    assert lr_factor(0, 1, 2, config, budget_fraction=0.8) == pytest.approx(0.1)  # 8/10
    assert lr_factor(0, 8, 2, config, budget_fraction=0.3) == pytest.approx(0.1)  # the epoch


def test_lr_schedule_does_not_move_when_the_world_shrinks():
    # One worker takes 2 images a step: after 4 such steps (8 images) the warm-up
    # stands where 2 full-size steps put it; the rate is not rescaled by default.
    config = _config(warmup_steps=4)
    assert lr_factor(8, 0, 1, config) == lr_factor(8, 0, 2, config) == 0.75
    linear = _config(warmup_steps=0, optim={"lr_scaling": "linear"})
    root = _config(warmup_steps=0, optim={"lr_scaling": "sqrt"})
    assert lr_factor(0, 0, 1, linear) == 0.5 and lr_factor(0, 0, 2, linear) == 1.0
    assert lr_factor(0, 0, 1, root) == pytest.approx(0.5**0.5)


def test_deformable_projections_train_at_their_share_of_the_rate():
    model = build_preset("deformable_detr_r18_small", num_classes=3)
    config = ExperimentConfig.from_dict(
        {"optim": {"lr": 2e-4, "backbone_lr": 2e-5, "linear_proj_lr_mult": 0.1}}
    )
    groups = {g["name"]: g for g in build_optimizer(model, config).param_groups}
    assert groups["linear_proj"]["lr"] == pytest.approx(2e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    projected = {names[id(p)] for p in groups["linear_proj"]["params"]}
    # every layer's sampling offsets, and the reference-point map
    expected = {n for n, _ in model.named_parameters() if "sampling_offsets" in n}
    assert projected == expected | {"reference_points.weight", "reference_points.bias"}


def test_optimizer_groups_backbone_and_the_rest():
    model = build_preset("detr_r18_tiny", num_classes=3)
    config = ExperimentConfig.from_dict({"optim": {"lr": 1e-3, "backbone_lr": 1e-5}})
    optimizer = build_optimizer(model, config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["other"]["lr"] == 1e-3 and groups["backbone"]["lr"] == 1e-5
    backbone = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone
    everything = sum(len(g["params"]) for g in optimizer.param_groups)
    assert everything == sum(1 for p in model.parameters() if p.requires_grad)


def test_epoch_seeds_differ_by_epoch_and_rank():
    seeds = {epoch_seed(42, e, r) for e in range(20) for r in range(8)}
    assert len(seeds) == 160
