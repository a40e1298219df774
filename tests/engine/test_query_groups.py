"""Training with query groups (Group DETR): exact where it must be, off means off."""

from __future__ import annotations

import copy

import pytest
import torch

from detr_ray.config import ExperimentConfig
from detr_ray.criterion.loss_keys import loss_keys, name_losses
from detr_ray.criterion.matcher import FlatTargets
from detr_ray.data.collate import PadCollate
from detr_ray.model.build import build_preset
from detr_ray.model.training_detr import TrainingDETR, groups_as_layers
from detr_ray.train.build import build_engine, build_trained_module
from detr_ray.train.engine import Engine
from detr_ray.train.seeds import seed_everything

from tests.support.reference_setup import reference_criterion


def _images(batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    mask = torch.zeros(batch, size, size, dtype=torch.bool)
    mask[1, :, size // 2 :] = True  # the second image is padded on the right
    return images, mask


def test_group_zero_is_the_reference_detr_and_groups_do_not_see_each_other():
    torch.manual_seed(0)
    detr = build_preset("detr_r18_tiny", num_classes=3).eval()  # dropout 0, eval: deterministic
    grouped = TrainingDETR(detr, num_groups=3).eval()
    images, mask = _images()
    with torch.no_grad():
        cls_ref, box_ref = detr(images, mask)  # (L, B, Q, .)
        cls, box, *_ = grouped(images, mask)  # (L, B, 3Q, .)
    q = detr.num_queries
    assert cls.shape == (2, 2, 3 * q, 4) and box.shape == (2, 2, 3 * q, 4)
    torch.testing.assert_close(cls[:, :, :q], cls_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(box[:, :, :q], box_ref, rtol=0, atol=1e-6)
    # group 2 alone, as the only queries of a plain DETR, gives group 2's outputs:
    # self-attention never mixed the groups
    alone = copy.deepcopy(detr)
    alone.query_embed.weight.data = grouped.extra_queries.weight.data[q:].clone()
    with torch.no_grad():
        cls_alone, _ = alone(images, mask)
    torch.testing.assert_close(cls[:, :, 2 * q :], cls_alone, rtol=0, atol=1e-6)
    # the reference model's own state_dict knows nothing of the extra groups
    assert set(detr.state_dict()) == {
        k.removeprefix("detr.") for k in grouped.state_dict() if k.startswith("detr.")
    }
    assert "extra_queries.weight" in grouped.state_dict()


def test_groups_become_layers_of_the_batched_matcher_and_loss(make_batch):
    num_layers, num_groups, q, k = 2, 3, 5, 4
    cls, box, targets = make_batch(num_layers, num_groups * q, k, [2, 0, 3], seed=1)
    criterion = reference_criterion(k)
    as_layers = (groups_as_layers(cls, num_groups), groups_as_layers(box, num_groups))
    flat = FlatTargets.from_list(targets)
    matching = criterion.matcher(*as_layers, flat)
    weighted = criterion.layer_losses(*as_layers, flat, matching)
    losses, objective = name_losses(weighted, num_groups)
    # a second way: each group on its own, as a reference DETR with those queries
    per_group = []
    for g in range(num_groups):
        queries = slice(g * q, (g + 1) * q)
        own = criterion(cls[:, :, queries], box[:, :, queries], targets)
        per_group.append(own)
        if g == 0:
            for name in loss_keys(num_layers):
                torch.testing.assert_close(losses[name], own[name], msg=name)
    for name in loss_keys(num_layers):
        mean = torch.stack([per_group[g][name] for g in range(1, num_groups)]).mean()
        torch.testing.assert_close(losses[f"groups/{name}"], mean, msg=name)
    torch.testing.assert_close(objective, sum(p["loss"] for p in per_group))
    reference = matching.layers(slice(None, None, num_groups))
    assert reference.num_layers == num_layers
    own_matching = criterion.matcher(cls[:, :, :q], box[:, :, :q], flat)
    assert torch.equal(reference.query_idx, own_matching.query_idx)


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=8, num_val=2, size=64, seed=4)


def _engine(shapes, module_for=None, model=None, **train) -> Engine:
    config = ExperimentConfig.from_dict(
        {
            "model": {"preset": "detr_r18_tiny", "num_classes": 3, "dropout": 0.0, **(model or {})},
            "data": {
                "train_ann": str(shapes.train_ann),
                "train_images": str(shapes.train_images),
                "val_ann": str(shapes.val_ann),
                "val_images": str(shapes.val_images),
                "augmentation": {"scaled_to": 64, "flip_prob": 0.0, "crop_prob": 0.0},
                "num_workers": 0,
            },
            "optim": {"lr": 1e-3, "backbone_lr": 1e-3},
            "train": {"batch_size": 4, "lr_drop_epochs": [], **train},
        }
    )
    from detr_ray.data.labels import LabelMap
    from detr_ray.model.build import build_model

    label_map = LabelMap((1, 2, 3), ("circle", "rectangle", "triangle"))
    seed_everything(0)
    detr = build_model(config.model)
    if module_for is None:
        return build_engine(config, label_map, detr=detr)
    # a model built for other settings than the engine's config
    module = build_trained_module(detr, module_for)
    return build_engine(config, label_map, detr=detr, wrap=lambda _: module)


def _one_step(engine: Engine):
    batch = PadCollate(32)([engine.train_set[i] for i in range(4)])
    result = engine.train_step(batch)
    grads = {
        n: p.grad.clone() for n, p in engine.reference_detr.named_parameters() if p.grad is not None
    }
    return result, grads


@pytest.mark.parametrize("option", [{"query_groups": 1}, {"dense_aux_weight": 0.0}])
def test_an_accelerator_off_is_bit_for_bit_the_step_without_the_option(shapes, option):
    absent, grads_absent = _one_step(_engine(shapes))
    off, grads_off = _one_step(_engine(shapes, **option))
    assert set(absent.losses) == set(off.losses) == set(loss_keys(2))
    for name in absent.losses:
        assert torch.equal(absent.losses[name], off.losses[name]), name
    assert grads_absent.keys() == grads_off.keys()
    for name in grads_absent:
        assert torch.equal(grads_absent[name], grads_off[name]), name


def test_a_grouped_engine_checkpoints_the_reference_model_and_keeps_the_groups(shapes):
    engine = _engine(shapes, query_groups=3)
    result, _ = _one_step(engine)
    assert {f"groups/{n}" for n in loss_keys(2)} <= set(result.losses)
    assert result.matching.num_layers == 2  # group 0 of each layer, for the logs
    state = engine.training_state()
    assert state["training_parts"]["extra_queries.weight"].shape == (
        2 * 10,
        64,
    )  # 2 extra groups x 10 queries
    assert set(engine.reference_detr.state_dict()) == set(
        build_preset("detr_r18_tiny", 3).state_dict()
    )
    # resume: the extra groups come back with the training state
    again = _engine(shapes, query_groups=3)
    again.load_checkpoint({"model": engine.reference_detr.state_dict(), **state})
    assert torch.equal(
        again.trained_module.extra_queries.weight, engine.trained_module.extra_queries.weight
    )


def test_a_dense_engine_logs_its_terms_and_checkpoints_the_reference_model(shapes):
    engine = _engine(shapes, dense_aux_weight=2.0)
    result, grads = _one_step(engine)
    assert set(result.losses) == set(loss_keys(2)) | {
        "dense/loss_cls",
        "dense/loss_bbox",
        "dense/loss_iou",
    }
    assert all(torch.isfinite(v) and v > 0 for v in result.losses.values())
    # the dense head learns, and its loss reaches the backbone through the encoder
    head = engine.trained_module.dense_head
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert set(engine.reference_detr.state_dict()) == set(
        build_preset("detr_r18_tiny", 3).state_dict()
    )
    parts = engine.training_state()["training_parts"]
    assert parts and all(name.startswith("dense_head.") for name in parts)
    again = _engine(shapes, dense_aux_weight=2.0)
    again.load_checkpoint({"model": engine.reference_detr.state_dict(), **engine.training_state()})
    for name, value in again.trained_module.dense_head.state_dict().items():
        assert torch.equal(value, head.state_dict()[name]), name


@pytest.mark.parametrize("train", [{"dense_aux_weight": 2.0}, {"query_groups": 3}])
def test_an_engine_refuses_a_model_built_for_other_accelerator_settings(shapes, train):
    from detr_ray.errors import ConfigError

    plain = ExperimentConfig.from_dict(
        {"data": {"train_ann": "a", "train_images": "b", "val_ann": "c", "val_images": "d"}}
    )
    with pytest.raises(ConfigError, match="build_trained_module"):
        _engine(shapes, module_for=plain, **train)  # the config wants it, the model lacks it


def test_a_time_budget_stops_training_mid_epoch_with_its_drops_scaled_to_it(shapes):
    from detr_ray.train.budget import TimeBudget

    # 8 images, batch 1: 8 steps an epoch; a clock that moves 7 s a step
    engine = _engine(
        shapes, batch_size=1, epochs=10, lr_drop_epochs=[5], log_every=1, time_budget_minutes=1.0
    )
    ticks = iter(range(0, 10_000, 7))
    engine.budget = TimeBudget(1.0, clock=lambda: float(next(ticks)))
    engine.budget.start()
    logged = []
    while not engine.finished:
        engine.train_epoch(on_log=logged.append)
    # step k ends with 7k s spent: step 9 (63 s) is past the 60-s budget, in epoch 2
    assert [log.global_step for log in logged] == list(range(1, 10))
    state = engine.state
    assert (state.global_step, state.epoch, state.step_in_epoch) == (9, 1, 1)
    assert state.train_seconds == 63 and engine.budget.exhausted
    # the drop of epoch 5 of 10 comes at half the budget: after step 5 (35 s >= 30 s)
    base = engine.base_lrs[0]
    rates = [log.metrics["lr/other"] for log in logged]
    assert rates[:5] == [base] * 5 and rates[5:] == pytest.approx([base * 0.1] * 4)
    # a checkpoint carries the seconds spent: a resumed engine knows its budget is spent
    again = _engine(shapes, batch_size=1, epochs=10, time_budget_minutes=1.0)
    again.load_checkpoint({"model": engine.reference_detr.state_dict(), **engine.training_state()})
    assert again.finished and again.budget.spent_s == 63
    more = _engine(shapes, batch_size=1, epochs=10, time_budget_minutes=2.0)
    more.load_checkpoint({"model": engine.reference_detr.state_dict(), **engine.training_state()})
    assert not more.finished  # a larger budget goes on
