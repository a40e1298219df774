"""Search space files: parsing, checking, and applying sampled values."""

from pathlib import Path

import pytest
import yaml

from detr_ray.config import ExperimentConfig
from detr_ray.errors import ConfigError
from detr_ray.tune.space import load_space, parse_space

ROOT = Path(__file__).resolve().parents[2]


SHIPPED = ["matching_costs", "bg_cls_weight", "joint", "accelerator", "deformable_focal"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_load(name):
    space = load_space(ROOT / "tune_spaces" / f"{name}.yaml")
    assert space.params
    defaults = ExperimentConfig().flat()
    assert all(key in defaults for key in space.keys)


def test_every_shipped_space_is_loaded_above():
    assert sorted(p.stem for p in (ROOT / "tune_spaces").glob("*.yaml")) == sorted(SHIPPED)


def test_the_deformable_space_sweeps_the_focal_costs_and_weights():
    space = load_space(ROOT / "tune_spaces" / "deformable_focal.yaml")
    assert {"matcher.cls_cost", "loss.cls_weight", "loss.focal_alpha", "loss.focal_gamma"} <= set(
        space.keys
    )


def test_follow_costs_copies_each_cost_into_its_loss_weight():
    space = parse_space(
        {
            "loss_weights": "follow_costs",
            "params": {
                "matcher.cls_cost": {"loguniform": [0.5, 4.0]},
                "matcher.iou_cost": {"uniform": [1.0, 3.0]},
                "loss.bg_cls_weight": {"uniform": [0.02, 0.3]},
            },
        }
    )
    sampled = {"matcher.cls_cost": 2.5, "matcher.iou_cost": 1.5, "loss.bg_cls_weight": 0.2}
    config = space.apply(ExperimentConfig().to_dict(), sampled)
    assert (config.matcher.cls_cost, config.loss.cls_weight) == (2.5, 2.5)
    assert (config.matcher.iou_cost, config.loss.iou_weight) == (1.5, 1.5)
    # the L1 cost is not swept: its weight keeps the base value, as does the cost
    assert (config.matcher.bbox_cost, config.loss.bbox_weight) == (5.0, 5.0)
    assert config.loss.bg_cls_weight == 0.2

    independent = parse_space({"params": {"matcher.cls_cost": {"uniform": [1.0, 3.0]}}})
    config = independent.apply(ExperimentConfig().to_dict(), {"matcher.cls_cost": 2.5})
    assert (config.matcher.cls_cost, config.loss.cls_weight) == (2.5, 1.0)


def test_every_distribution_kind_parses():
    space = parse_space(
        {
            "params": {
                "matcher.cls_cost": {"quniform": [0.5, 4.0, 0.5]},
                "train.batch_size": {"randint": [2, 9]},
                "matcher.bbox_cost_format": {"choice": ["xyxy", "cxcywh"]},
                "loss.bg_cls_weight": {"grid": [0.05, 0.1, 0.2]},
            }
        }
    )
    assert [(p.kind, p.args) for p in space.params] == [
        ("quniform", (0.5, 4.0, 0.5)),
        ("randint", (2, 9)),
        ("choice", ("xyxy", "cxcywh")),
        ("grid", (0.05, 0.1, 0.2)),
    ]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"matcher.cls_cots": {"uniform": [1, 2]}}, r"params.matcher.cls_cots: not a config key"),
        ({"cls_cost": {"uniform": [1, 2]}}, r"did you mean matcher.cls_cost"),
        ({"matcher.cls_cost": {"gaussian": [1, 2]}}, r"unknown distribution 'gaussian'"),
        ({"matcher.cls_cost": {"uniform": [3.0, 1.0]}}, r"cls_cost: low \(3.0\) must be below"),
        ({"matcher.cls_cost": {"loguniform": [0.0, 1.0]}}, r"loguniform needs low > 0"),
        ({"matcher.cls_cost": {"uniform": [1.0]}}, r"uniform takes \[low, high\]"),
        ({"matcher.cls_cost": {"quniform": [1.0, 2.0, 0]}}, r"q > 0"),
        ({"train.batch_size": {"randint": [1.5, 4]}}, r"randint takes integers"),
        ({"loss.bg_cls_weight": {"uniform": [-0.5, 0.2]}}, r"params.loss.bg_cls_weight = -0.5"),
        ({"train.batch_size": {"choice": ["big"]}}, r"params.train.batch_size = 'big'"),
    ],
)
def test_a_bad_space_names_the_key(params, message):
    with pytest.raises(ConfigError, match=message):
        parse_space({"params": params}, source="bad.yaml")


def test_bad_space_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_space(tmp_path / "missing.yaml")
    clash = tmp_path / "clash.yaml"
    both = {"matcher.cls_cost": {"uniform": [1, 2]}, "loss.cls_weight": {"uniform": [1, 2]}}
    clash.write_text(yaml.safe_dump({"loss_weights": "follow_costs", "params": both}))
    with pytest.raises(ConfigError, match=r"clash.yaml: .*loss.cls_weight.* follow the matching"):
        load_space(clash)
    mode = tmp_path / "mode.yaml"
    mode.write_text(yaml.safe_dump({"loss_weights": "tied", "params": {}}))
    with pytest.raises(ConfigError, match="mode.yaml: loss_weights must be one of"):
        load_space(mode)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"parameters": {}}))
    with pytest.raises(ConfigError, match=r"extra.yaml: unknown top-level keys \['parameters'\]"):
        load_space(extra)


def test_a_trial_is_fitted_to_a_small_cluster():
    from detr_ray.cluster.resources import TRIAL_DRIVER_CPUS, fit_trial_to_cluster

    base = ExperimentConfig.from_dict({"scaling": {"num_workers": 2, "cpus_per_worker": 1.0}})
    assert fit_trial_to_cluster(base, 4.0) is base  # fits: unchanged
    fitted = fit_trial_to_cluster(base, 2.0).scaling  # 2 x 1 + the trial's own 0.01 > 2
    assert fitted.cpus_per_worker == 0.99
    assert 2 * fitted.cpus_per_worker + TRIAL_DRIVER_CPUS <= 2.0
    with pytest.raises(ConfigError, match="lower scaling.num_workers"):
        fit_trial_to_cluster(base, 0.01)
