import dataclasses
from pathlib import Path

import pytest
import yaml

from detr_ray.config import ExperimentConfig, apply_overrides, load_config
from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.config.model import PRESETS
from detr_ray.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_load():
    tiny = load_config(CONFIGS / "shapes_tiny.yaml")
    coco = load_config(CONFIGS / "coco_detr_r50.yaml")
    assert tiny.data.synthetic is not None and tiny.scaling.num_workers == 2
    # DETR's augmentation at 64 px, flips only (no multi-scale resize, no crop)
    assert tiny.data.augmentation == dataclasses.replace(
        AugmentationConfig.scaled(64), train_scales=(64,), crop_prob=0.0
    )
    assert (tiny.model.backbone_stages, tiny.model.pre_norm, tiny.model.backbone_norm) == (
        3,
        True,
        "group",
    )
    # the official recipe
    assert coco.model == PRESETS["detr_r50"]
    assert (coco.optim.lr, coco.optim.backbone_lr, coco.optim.weight_decay) == (1e-4, 1e-5, 1e-4)
    assert coco.optim.grad_clip == 0.1 and coco.train.batch_size == 2
    assert coco.train.epochs == 500 and coco.train.lr_drop_epochs == (400,)
    assert (coco.matcher.cls_cost, coco.matcher.bbox_cost, coco.matcher.iou_cost) == (1, 5, 2)
    assert (coco.loss.cls_weight, coco.loss.bbox_weight, coco.loss.iou_weight) == (1, 5, 2)
    assert coco.loss.bg_cls_weight == 0.1 and coco.data.augmentation == AugmentationConfig()
    # the convergence accelerators: off in the official recipe, the dense head in the demo
    assert (coco.train.dense_aux_weight, coco.train.query_groups) == (0.0, 1)
    assert (tiny.train.dense_aux_weight, tiny.train.query_groups) == (4.0, 1)


def test_overrides_types_and_round_trip():
    config = load_config(
        CONFIGS / "shapes_tiny.yaml",
        [
            "train.epochs=3",
            "optim.lr=3e-4",
            "model.num_queries=7",
            "data.synthetic=null",
            "train.lr_drop_epochs=[1, 2]",
            "run.name=other",
        ],
    )
    assert config.train.epochs == 3 and config.optim.lr == 3e-4
    assert config.model.num_queries == 7 and config.model.d_model == 128  # preset kept
    assert config.data.synthetic is None and config.train.lr_drop_epochs == (1, 2)
    again = ExperimentConfig.from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert config.flat()["model.num_queries"] == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.epoch=3", "unknown key train.epoch; train has keys"),
        ("optim.lr=fast", "optim.lr must be a number, got 'fast'"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("train.batch_size=2.5", "train.batch_size must be an integer, got 2.5"),
        ("scaling.use_gpu=maybe", "scaling.use_gpu must be true or false"),
        ("matcher.bbox_cost_format=xywh", "matcher.bbox_cost_format must be one of"),
        ("loss.bg_cls_weight=-0.1", "loss.bg_cls_weight must be >= 0"),
        ("model.preset=detr_r999", "model.preset: unknown model preset 'detr_r999'"),
        ("model.dropout=1.5", r"model.dropout must be in \[0, 1\)"),
        ("model.class_head=random", r"model.class_head must be one of \['keep', 'reinit'\]"),
        ("data.augmentation.crop_prob=2", r"data.augmentation.crop_prob must be in \[0, 1\]"),
        ("data.on_bad_image=ignore", r"data.on_bad_image must be one of \['error', 'skip'\]"),
        ("model.backbone_norm=layer", "model.backbone_norm must be one of"),
        ("model.nhead=3", "model.d_model must be a multiple of nhead, got 128"),
        ("train.epochs=.inf", "train.epochs must be an integer, got inf"),
        ("train.amp=fp16", "train.amp: fp16 needs a GPU"),
        ("run.name=a/b", "run.name must be a non-empty name without '/'"),
        ("bogus.key=1", "unknown key bogus; the config has keys"),
        ("model.family=yolo", r"model.family must be one of \['detr', 'deformable_detr'\]"),
        ("model.with_box_refine=true", "model.with_box_refine must be false for family detr"),
        ("loss.focal_alpha=1.5", r"loss.focal_alpha must be in \[0, 1\]"),
    ],
)
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(CONFIGS / "shapes_tiny.yaml", [override])
    assert "shapes_tiny.yaml" in str(error.value)


def test_the_deformable_configs_are_the_official_recipe_and_the_family_sets_its_defaults():
    coco = load_config(CONFIGS / "coco_deformable_detr_r50.yaml")
    assert coco.model == PRESETS["deformable_detr_r50"] and coco.model.deformable
    assert (coco.model.num_queries, coco.model.num_feature_levels, coco.model.dec_points) == (
        300,
        4,
        4,
    )
    assert (coco.model.num_encoder_layers, coco.model.dim_feedforward) == (6, 1024)
    assert (coco.optim.lr, coco.optim.backbone_lr, coco.optim.linear_proj_lr_mult) == (
        2e-4,
        2e-5,
        0.1,
    )
    assert coco.train.epochs == 50 and coco.train.lr_drop_epochs == (40,)
    assert coco.train.batch_size * coco.scaling.num_workers == 32
    assert (coco.matcher.cls_cost, coco.matcher.bbox_cost, coco.matcher.iou_cost) == (2, 5, 2)
    assert (coco.loss.cls_weight, coco.loss.bbox_weight, coco.loss.iou_weight) == (2, 5, 2)
    assert (coco.loss.focal_alpha, coco.loss.focal_gamma) == (0.25, 2.0)
    # a family's own defaults where the file is silent, the file's values where it speaks
    raw = {"data": {"train_ann": "a", "train_images": "b", "val_ann": "c", "val_images": "d"}}
    plain = ExperimentConfig.from_dict({**raw, "model": {"preset": "deformable_detr_r18_small"}})
    assert (plain.matcher.cls_cost, plain.loss.cls_weight) == (2.0, 2.0)
    given = ExperimentConfig.from_dict(
        {**raw, "model": {"family": "deformable_detr"}, "matcher": {"cls_cost": 3.0}}
    )
    assert (given.matcher.cls_cost, given.loss.cls_weight) == (3.0, 2.0)
    detr = ExperimentConfig.from_dict({**raw, "model": {"preset": "detr_r18_small"}})
    assert (detr.matcher.cls_cost, detr.loss.cls_weight) == (1.0, 1.0)
    assert load_config(CONFIGS / "shapes_deformable.yaml").model.deformable
    # what Deformable DETR has not: a clear refusal naming the key
    for bad, message in [
        ({"pre_norm": True}, "model.pre_norm must be false for family deformable_detr"),
        ({"two_stage": True}, "model.two_stage must be false unless with_box_refine"),
        ({"d_model": 48, "nhead": 4}, "model.d_model must be a multiple of 32"),
        ({"position_encoding": "learned"}, "model.position_encoding must be 'sine'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_dict({**raw, "model": {"family": "deformable_detr", **bad}})
    with pytest.raises(ConfigError, match="train.query_groups must be 1 for model.family"):
        ExperimentConfig.from_dict(
            {**raw, "model": {"family": "deformable_detr"}, "train": {"query_groups": 2}}
        )


def test_malformed_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="--set expects key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="train.epochs is not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_resolving_expands_home_and_pins_the_tracking_store(tmp_path, monkeypatch):
    """What a cluster job relies on: ``~`` is the running machine's home, and a head's
    MLFLOW_TRACKING_URI reaches the workers through the config (not their environment)."""
    from detr_ray.train.prepare import prepare_run, resolve_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    small = ["data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.size=32"]
    config = load_config(CONFIGS / "shapes_tiny.yaml", [*small, "run.storage_path=~/runs"])
    resolved = resolve_paths(config)
    assert resolved.run.storage_path == str(tmp_path / "home" / "runs")
    assert resolved.data.train_ann == str(
        tmp_path / "data" / "shapes8k" / "annotations" / "train.json"
    )
    assert resolved.tracking.uri == "http://127.0.0.1:1"
    # A configured store wins over the environment; with neither, the default sqlite
    # file of the storage path is pinned (resolved once, before Ray).
    configured = load_config(CONFIGS / "shapes_tiny.yaml", [*small, "tracking.uri=http://m:1"])
    assert resolve_paths(configured).tracking.uri == "http://m:1"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    prepared = prepare_run(config)  # generates the small synthetic set, checks it
    assert prepared.config.tracking.uri == f"sqlite:///{tmp_path / 'home' / 'runs' / 'mlflow.db'}"
    assert prepared.config.model.num_classes == prepared.label_map.num_classes == 3


def test_config_words_are_the_words_the_code_accepts():
    """The config spells allowed words as Literal types; the code that uses them
    owns its own list. They must stay equal."""
    import typing

    from detr_ray.config import DataConfig, InitConfig, MatcherConfig
    from detr_ray.config.model import ModelConfig
    from detr_ray.criterion.matcher import BOX_COST_FORMATS
    from detr_ray.data.coco import BAD_IMAGE_POLICIES
    from detr_ray.model.backbone import NORMS, RESNET_LAYOUTS
    from detr_ray.model.pretrained import CLASS_HEAD_POLICIES

    def words(cls, name):
        return set(typing.get_args(typing.get_type_hints(cls)[name]))

    assert words(MatcherConfig, "bbox_cost_format") == set(BOX_COST_FORMATS)
    assert words(ModelConfig, "backbone_norm") == set(NORMS)
    assert words(ModelConfig, "backbone_depth") == set(RESNET_LAYOUTS)
    assert words(DataConfig, "on_bad_image") == set(BAD_IMAGE_POLICIES)
    assert words(InitConfig, "class_head") == set(CLASS_HEAD_POLICIES)


def test_direct_construction_checks_like_loading():
    from detr_ray.config import MatcherConfig
    from detr_ray.config.model import ModelConfig

    with pytest.raises(ConfigError, match=r"bbox_cost_format must be one of \['xyxy', 'cxcywh'\]"):
        MatcherConfig(bbox_cost_format="xywh")
    with pytest.raises(ConfigError, match="num_queries must be >= 1, got 0"):
        ModelConfig(num_queries=0)


def test_command_line_defaults_are_the_dataclasses_defaults():
    from detr_ray.cli import build_parser
    from detr_ray.config import RunConfig, SyntheticDataConfig
    from detr_ray.tune.options import SweepOptions

    parse = build_parser().parse_args
    synth = parse(["data", "synth", "--out", "x"])
    assert (synth.train, synth.val, synth.size, synth.seed) == (
        SyntheticDataConfig.num_train,
        SyntheticDataConfig.num_val,
        SyntheticDataConfig.size,
        SyntheticDataConfig.seed,
    )
    tune = parse(["tune", "c.yaml", "--space", "s.yaml"])
    for key in ("num_samples", "scheduler", "search", "metric", "grace_period"):
        assert getattr(tune, key) == getattr(SweepOptions, key), key
    assert parse(["dashboard"]).storage_path == RunConfig.storage_path
