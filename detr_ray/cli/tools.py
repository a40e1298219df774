"""``detr-ray data ...``, ``model list``, ``eval`` and ``predict``: no Ray."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from pathlib import Path

from detr_ray.config import SyntheticDataConfig
from detr_ray.errors import ConfigError, DataError


def run_synth(args: argparse.Namespace) -> int:
    from detr_ray.data.synthetic import generate

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (it is created if missing)")
    # The same checks as the config's data.synthetic section (sizes, counts).
    settings = SyntheticDataConfig(
        root=str(out),
        num_train=args.train,
        num_val=args.val,
        size=args.size,
        seed=args.seed,
        kind=args.kind,
    )
    dataset = generate(
        out,
        settings.num_train,
        settings.num_val,
        size=settings.size,
        seed=settings.seed,
        kind=settings.kind,
    )
    print(f"train: {dataset.train_ann}  images: {dataset.train_images}")
    print(f"val:   {dataset.val_ann}  images: {dataset.val_images}")
    return 0


def run_data_check(args: argparse.Namespace) -> int:
    """Print what a COCO set holds; exit 1 when something in it would stop training."""
    from detr_ray.data.check import check_dataset

    report = check_dataset(args.ann, args.images, options=_storage_options(args))
    print(report.format())
    problems = report.problems(hint="fix them, or train with data.on_bad_image: skip")
    for problem in problems:
        print(f"problem: {problem}")
    print("would stop training" if problems else "ready to train")
    return 1 if problems else 0


def run_data_profile(args: argparse.Namespace) -> int:
    """Print the profile of a COCO set (:mod:`detr_ray.data.profile`)."""
    from detr_ray.data.annotations import load_coco_json
    from detr_ray.data.image_folder import open_image_folder
    from detr_ray.data.profile import format_profile, profile_coco

    options = _storage_options(args)
    if not open_image_folder(args.images, options).exists():
        raise DataError(f"image folder {args.images} does not exist")
    for flag, value in (("--scale", args.scale), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a positive number of pixels, got {value}")
    profile = profile_coco(load_coco_json(args.ann, options), args.scale, args.max_size)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        print(format_profile(profile, str(args.ann)))
    return 0


def run_recipe(args: argparse.Namespace) -> int:
    """Profile, probe, choose and write a config (:mod:`detr_ray.recipe`)."""
    from detr_ray.data.profile import format_profile
    from detr_ray.recipe.make import RecipeInputs, make_recipe
    from detr_ray.recipe.write import recipe_yaml

    for flag, value in (
        ("--num-workers", args.num_workers),
        ("--cpus-per-worker", args.cpus_per_worker),
    ):
        if value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}")
    for flag in ("train_images", "val_images"):
        if not Path(getattr(args, flag)).is_dir():
            raise DataError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is not a folder")
    inputs = RecipeInputs(
        train_ann=str(Path(args.train_ann).resolve()),
        train_images=str(Path(args.train_images).resolve()),
        val_ann=str(Path(args.val_ann).resolve()),
        val_images=str(Path(args.val_images).resolve()),
        budget_minutes=args.budget_minutes,
        num_workers=args.num_workers,
        gpu=args.gpu,
        cpus_per_worker=args.cpus_per_worker,
        address=args.address,
        init_from=args.init_from,
        name=args.name,
        storage_path=args.storage_path,
        seed=args.seed,
        family=args.family,
        probe_steps=args.probe_steps,
    )
    recipe = make_recipe(inputs)
    print(format_profile(recipe.profile, inputs.train_ann))
    for family, probe in recipe.probes.items():
        print(
            f"probe: {family} {probe.images_per_s:.1f} images/s on one worker "
            f"({probe.steps} timed step(s))"
        )
    for key, choice in recipe.plan.choices.items():
        value = round(choice.value, 6) if isinstance(choice.value, float) else choice.value
        print(f"{key}: {value}  ({choice.why})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(recipe_yaml(recipe, inputs))
    print(f"written: {out}  (detr-ray train {out})")
    return 0


def run_model_list(args: argparse.Namespace) -> int:
    """The presets with their architecture and parameter counts (COCO's 91 class rows)."""
    from detr_ray.config.model import PRESETS
    from detr_ray.model.build import build_model

    print(
        f"{'preset':<30} {'family':<15} {'backbone':<22} {'d_model':>7} {'enc':>3} {'dec':>3} "
        f"{'queries':>7} {'deformable':<28} {'params':>8} {'trainable':>9}"
    )
    for name, preset in PRESETS.items():
        model = build_model(dataclasses.replace(preset, num_classes=91))
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        backbone = (
            f"ResNet-{preset.backbone_depth} {preset.backbone_norm}"
            + (" DC5" if preset.dilation else "")
            + (f" {preset.backbone_stages} stages" if preset.backbone_stages != 4 else "")
        )
        options = ["-"]
        if preset.deformable:  # levels x points, and the two options
            options = [f"{preset.num_feature_levels}x{preset.dec_points}"]
            options += ["box_refine"] * preset.with_box_refine + ["two_stage"] * preset.two_stage
        print(
            f"{name:<30} {preset.family:<15} {backbone:<22} {preset.d_model:>7} "
            f"{preset.num_encoder_layers:>3} {preset.num_decoder_layers:>3} "
            f"{preset.num_queries:>7} {','.join(options):<28} {total / 1e6:>7.1f}M "
            f"{trainable / 1e6:>8.1f}M"
        )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from detr_ray.evaluation.coco_eval import evaluate_results_file, format_metrics

    if args.cluster:
        metrics, summary = _evaluate_on_cluster(args)
    elif args.results:
        metrics, summary = evaluate_results_file(
            args.ann,
            args.results,
            args.eval_backend,
            args.raw_ground_truth,
            class_agnostic=args.class_agnostic,
        )
    else:
        if not args.images:
            raise ConfigError(
                "--checkpoint needs --images, the folder the annotation file refers to"
            )
        from detr_ray.evaluation.detect import resolve_device
        from detr_ray.evaluation.predict import evaluate_checkpoint

        if args.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
        metrics, summary = evaluate_checkpoint(
            args.checkpoint,
            args.ann,
            args.images,
            batch_size=args.batch_size,
            device=resolve_device(args.device),
            on_bad_image=args.on_bad_image,
            eval_backend=args.eval_backend,
            raw_ground_truth=args.raw_ground_truth,
            class_agnostic=args.class_agnostic,
        )
    if args.json:
        print(json.dumps({k: None if math.isnan(v) else v for k, v in metrics.items()}, indent=2))
    else:
        print(summary)
        print(format_metrics(metrics))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from detr_ray.evaluation.detect import resolve_device
    from detr_ray.evaluation.predict import predict_images

    if args.cluster:
        return _predict_on_cluster(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder (it is created if missing)")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint_of(args, tmp)
        json_path, count = predict_images(
            checkpoint,
            args.images,
            out,
            score_threshold=args.threshold,
            device=resolve_device(args.device),
        )
    print(f"wrote {count} drawing(s) and {json_path}")
    return 0


def _evaluate_on_cluster(args: argparse.Namespace) -> tuple[dict[str, float], str]:
    """``eval --checkpoint --cluster``: :func:`detr_ray.batch.pipeline.evaluate_on_cluster`."""
    from detr_ray.batch.pipeline import ClusterPrediction, evaluate_on_cluster
    from detr_ray.cluster.local import choose_cluster
    from detr_ray.cluster.session import init_ray, set_ray_env_defaults

    if not args.checkpoint or not args.images:
        raise ConfigError("eval --cluster needs --checkpoint and --images")
    settings = ClusterPrediction(batch_size=args.batch_size, max_actors=args.actors, gpu=args.gpu)
    cluster = choose_cluster(args.address)  # a dead address fails now
    set_ray_env_defaults()
    init_ray(cluster)
    return evaluate_on_cluster(
        args.checkpoint,
        args.ann,
        args.images,
        settings,
        _storage_options(args),
        eval_backend=args.eval_backend,
        raw_ground_truth=args.raw_ground_truth,
        class_agnostic=args.class_agnostic,
    )


def _predict_on_cluster(args: argparse.Namespace) -> int:
    """``predict --cluster``: :mod:`detr_ray.batch.pipeline` on the chosen Ray cluster."""
    from detr_ray.batch.pipeline import ClusterPrediction, predict_on_cluster
    from detr_ray.cluster.local import choose_cluster
    from detr_ray.cluster.session import init_ray, set_ray_env_defaults

    settings = ClusterPrediction(
        score_threshold=args.threshold,
        batch_size=args.batch_size,
        max_actors=args.actors,
        gpu=args.gpu,
        part_size=args.part_size,
    )
    options = _storage_options(args)
    out = args.out if "://" in args.out else str(Path(args.out).resolve())
    cluster = choose_cluster(args.address)  # a dead address fails now
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint_of(args, tmp)
        set_ray_env_defaults()
        init_ray(cluster)
        written, skipped = predict_on_cluster(checkpoint, args.images, out, settings, options)
    print(f"predicted {written} image(s) into {out} ({skipped} done before, skipped)")
    return 0


def _checkpoint_of(args: argparse.Namespace, tmp: str) -> str:
    """``--checkpoint``, or ``--model``'s checkpoint downloaded into ``tmp``."""
    if not args.model:
        return args.checkpoint
    from detr_ray.tracking.registry import download_registered_checkpoint
    from detr_ray.tracking.store import require_existing_store, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, args.storage_path)
    require_existing_store(uri, f"--model {args.model}")
    return str(download_registered_checkpoint(args.model, uri, tmp))


def _storage_options(args: argparse.Namespace):
    from detr_ray.storage import StorageOptions

    return StorageOptions(args.endpoint, args.region)
