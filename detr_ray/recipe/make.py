"""``detr-ray recipe``: profile the data, probe the candidates, choose, write a config.

The order (each step's reasons go into the config it writes):

1. profile the training set (:mod:`detr_ray.data.profile`);
2. the candidates: each model family at the input size the data asks of it
   (:func:`~detr_ray.recipe.rules.candidates`), or, to fine-tune, the
   checkpoint's model;
3. probe each candidate's training step on the data (:mod:`~detr_ray.recipe.probe`,
   on the cluster when given one); with ``--family``, that family's alone;
4. choose the family, queries, batch, learning rate, dense head, epochs and
   augmentation (:mod:`~detr_ray.recipe.rules`), within the time budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from detr_ray.checkpoint import read_source
from detr_ray.config import ExperimentConfig
from detr_ray.data.annotations import load_coco_json
from detr_ray.data.labels import LabelMap
from detr_ray.data.profile import DatasetProfile, profile_coco
from detr_ray.errors import ConfigError, DataError
from detr_ray.recipe.probe import ProbeResult, probe, probe_on_cluster
from detr_ray.recipe.rules import (
    EVALUATIONS,
    LR_DROP_AT,
    MANY_EPOCHS,
    Candidate,
    Plan,
    batch_and_lr,
    candidates,
    choose_family,
    epochs_for,
    queries_for,
    scale_for,
    small_model,
)
from detr_ray.train.data_fit import finest_stride

DDP_EFFICIENCY = 0.9  # workers' speed together against alone (gradient all-reduce)
EVAL_SPEEDUP = 3.0  # a forward pass against a training step
EVAL_OVERHEAD_S = 5.0  # an evaluation's COCOeval, checkpoint and report


@dataclass(frozen=True)
class RecipeInputs:
    """What ``detr-ray recipe`` was given."""

    train_ann: str
    train_images: str
    val_ann: str
    val_images: str
    budget_minutes: float
    num_workers: int = 2
    gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None
    init_from: str | None = None
    name: str = "recipe"
    storage_path: str = "runs"
    seed: int = 42
    family: str | None = None  # force a family instead of choosing
    probe_steps: int = 3  # timed steps a probe takes, after one warm-up step


@dataclass
class Recipe:
    """A config for the data, with its reasons (``plan``), the profile and the probes."""

    config: ExperimentConfig
    plan: Plan
    profile: DatasetProfile
    probes: dict[str, ProbeResult]


def make_recipe(inputs: RecipeInputs) -> Recipe:
    """Profile, probe, choose (see the module doc)."""
    if inputs.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {inputs.budget_minutes:g}")
    if inputs.probe_steps < 1:
        raise ConfigError(f"--probe-steps must be at least 1, got {inputs.probe_steps}")
    if inputs.family and inputs.init_from:
        raise ConfigError("--family and --init-from together: the checkpoint's family is used")
    data = load_coco_json(inputs.train_ann)
    if not data["annotations"]:
        raise DataError(
            f"{inputs.train_ann} has no annotations: there is nothing to learn; a recipe needs "
            "labelled training images"
        )
    source = profile_coco(data)
    label_map = LabelMap.from_categories(data["categories"])
    plan = Plan()
    if inputs.init_from:
        options = [_fine_tune_candidate(inputs, data, source, label_map, plan)]
    else:
        options = candidates(data, source, inputs.gpu)
    if inputs.family:  # only the family asked for is probed
        options = [c for c in options if c.family == inputs.family]
    probes = {
        c.family: _probe(_config(inputs, c, label_map, plan), label_map, inputs) for c in options
    }
    if inputs.init_from:
        chosen = options[0]
    elif inputs.family:
        (chosen,) = options
        plan.set("model.family", chosen.family, "--family asked for it")
    else:
        chosen, why = choose_family(options)
        plan.set("model.family", chosen.family, why)
    plan.set("data.augmentation.val_scale", chosen.scale, chosen.why_scale)
    speed = probes[chosen.family].images_per_s * inputs.num_workers * DDP_EFFICIENCY
    val_images = len(load_coco_json(inputs.val_ann)["images"])
    eval_s = val_images / (speed * EVAL_SPEEDUP) + EVAL_OVERHEAD_S
    epochs, why = epochs_for(inputs.budget_minutes, speed, source.images, eval_s)
    plan.set("train.epochs", epochs, why)
    profile = profile_coco(data, chosen.scale, chosen.max_size)
    config = _config(inputs, chosen, label_map, plan, epochs=epochs, profile=profile)
    return Recipe(config, plan, profile, probes)


def _fine_tune_candidate(inputs, data, source, label_map, plan) -> Candidate:
    """The checkpoint's model at the input its finest map needs; the class head
    kept when the checkpoint knows every category (same id, same name)."""
    found = read_source(inputs.init_from)
    if found.config is None or found.label_map is None:
        raise ConfigError(
            f"--init-from {inputs.init_from} is a backbone's weights only; the recipe fine-tunes "
            "a detector (detr-ray, official or Hugging Face checkpoint)"
        )
    model = dataclasses.replace(found.config, num_classes=None)
    scale, why = scale_for(data, source, finest_stride(model))
    theirs = dict(zip(found.label_map.category_ids, found.label_map.names))
    keep = all(theirs.get(c) == n for c, n in zip(label_map.category_ids, label_map.names))
    plan.set(
        "model.class_head",
        "keep" if keep else "reinit",
        f"{found.description} knows every category here (same ids and names): its rows are kept"
        if keep
        else f"{found.description} does not know every category here by id and name: a new head",
    )
    plan.set("model.init_from", inputs.init_from, f"fine-tune {found.description}")
    return Candidate(model.family, model, scale, why)


def _probe(config: ExperimentConfig, label_map: LabelMap, inputs: RecipeInputs) -> ProbeResult:
    if inputs.address:
        return probe_on_cluster(config, label_map, inputs.address, inputs.probe_steps)
    return probe(config, label_map, inputs.probe_steps)


def _config(
    inputs: RecipeInputs,
    candidate: Candidate,
    label_map: LabelMap,
    plan: Plan,
    epochs: float | None = None,
    profile: DatasetProfile | None = None,
) -> ExperimentConfig:
    """The experiment of ``candidate``: a probe's (``epochs`` None) or the recipe's."""
    fine_tune = inputs.init_from is not None
    deformable = candidate.model.deformable
    batch, lr, backbone_lr, why_lr = batch_and_lr(
        inputs.gpu,
        inputs.num_workers,
        fine_tune,
        deformable=deformable,
        small=small_model(candidate.model),
    )
    dense = 0.0 if fine_tune else (2.0 if deformable else 4.0)
    model = dataclasses.asdict(candidate.model) | {"num_classes": label_map.num_classes}
    augmentation: dict = {"scaled_to": candidate.scale, "train_scales": [candidate.scale]}
    augmentation["crop_prob"] = 0.0
    train: dict = {
        "batch_size": batch,
        "dense_aux_weight": dense,
        "seed": inputs.seed,
        "epochs": 1,
        "lr_drop_epochs": [],
    }
    if epochs is not None and profile is not None:
        queries, why = queries_for(profile)
        theirs = candidate.model.num_queries
        if fine_tune and theirs != queries:
            why += (
                f"; the checkpoint's {theirs} query embeddings start the {queries}"
                if queries > theirs
                else f"; the first {queries} of the checkpoint's {theirs} query embeddings"
            )
        model["num_queries"] = queries
        plan.set("model.num_queries", queries, why)
        if epochs >= MANY_EPOCHS:
            augmentation = {"scaled_to": candidate.scale}
            plan.set(
                "data.augmentation.crop_prob",
                0.5,
                f"{epochs:.0f} epochs see each image often: DETR's multi-scale resize and crops",
            )
        else:
            plan.set(
                "data.augmentation.crop_prob",
                0.0,
                f"{epochs:.1f} epochs see each image a few times: flips at one size only",
            )
        planned = max(1, round(epochs))
        steps_per_epoch = max(1, profile.images // (batch * inputs.num_workers))
        limit = 5 * planned  # only a limit: the budget ends the run
        expected = plan.choices["train.epochs"].why
        plan.set(
            "train.epochs", limit, f"{expected}; {limit} is a limit: the time budget ends the run"
        )
        train.update(
            epochs=limit,
            lr_drop_epochs=[round(LR_DROP_AT * limit)],  # its share of epochs: of the budget
            time_budget_minutes=inputs.budget_minutes,
            eval_every=max(1, planned // EVALUATIONS),
            log_every=max(1, min(50, steps_per_epoch // 20)),
        )
        plan.set("train.batch_size", batch, why_lr)
        plan.set("optim.lr", lr, why_lr)
        if backbone_lr != lr:
            plan.set(
                "optim.backbone_lr", backbone_lr, "a tenth of optim.lr: the pretrained backbone"
            )
        plan.set(
            "train.time_budget_minutes",
            inputs.budget_minutes,
            "the run stops here (train.epochs is only a limit), then evaluates and saves",
        )
        plan.set(
            "train.lr_drop_epochs",
            train["lr_drop_epochs"],
            f"the drop at {LR_DROP_AT:.0%} of the budget (this epoch's share of train.epochs)",
        )
        plan.set(
            "train.dense_aux_weight",
            dense,
            "no dense head when fine-tuning: it learned less and ran slower (BENCHMARKS.md)"
            if fine_tune
            else "the dense auxiliary head speeds up training from scratch"
            + (" (focal classes: half DETR's 4)" if deformable else ""),
        )
    raw = {
        "model": model | ({"init_from": inputs.init_from} if fine_tune else {}),
        "data": {
            "train_ann": inputs.train_ann,
            "train_images": inputs.train_images,
            "val_ann": inputs.val_ann,
            "val_images": inputs.val_images,
            "augmentation": augmentation,
            "size_divisor": 32,
            "num_workers": 4 if inputs.gpu else 0,
        },
        "optim": {"lr": lr, "backbone_lr": backbone_lr, "weight_decay": 1e-4, "grad_clip": 0.1},
        "train": train,
        "scaling": {
            "num_workers": inputs.num_workers,
            "cpus_per_worker": inputs.cpus_per_worker,
            "use_gpu": inputs.gpu,
        },
        "run": {"name": inputs.name, "storage_path": inputs.storage_path},
    }
    if fine_tune:
        raw["model"]["class_head"] = plan.value("model.class_head")
    return ExperimentConfig.from_dict(raw)


__all__ = ["EVALUATIONS", "Recipe", "RecipeInputs", "make_recipe"]
