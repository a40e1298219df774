"""The Ray-free parts of training: schedule, resume sampler, step statistics."""

import pytest

from detr_ray.config import ExperimentConfig
from detr_ray.model.build import build_preset
from detr_ray.train.engine import SkipFirst, build_optimizer, epoch_seed, lr_factor


def _config(**train):
    return ExperimentConfig.from_dict({"train": train})


def test_lr_factor_warmup_and_drops_by_hand():
    config = _config(warmup_steps=4, lr_drop_epochs=[2, 3], lr_gamma=0.1)
    steps_per_epoch = 10
    assert [lr_factor(s, steps_per_epoch, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(19, steps_per_epoch, config) == 1.0  # still epoch 1
    assert lr_factor(20, steps_per_epoch, config) == pytest.approx(0.1)  # epoch 2
    assert lr_factor(35, steps_per_epoch, config) == pytest.approx(0.01)  # epoch 3


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


def test_skip_first_resumes_an_epoch_midway():
    assert list(SkipFirst(range(10), 4)) == [4, 5, 6, 7, 8, 9]
    assert len(SkipFirst(range(10), 4)) == 6 and len(SkipFirst(range(3), 5)) == 0


def test_epoch_seeds_differ_by_epoch_and_rank():
    seeds = {epoch_seed(42, e, r) for e in range(20) for r in range(8)}
    assert len(seeds) == 160
