"""``detr-ray train``, ``tune``, ``config show`` and ``dashboard``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from detr_ray import storage
from detr_ray.config import ExperimentConfig, RunConfig, load_config
from detr_ray.schema import default_of

DASHBOARD_PORT = 5000


def run_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config a ``train`` (or ``config show``) command line describes."""
    overrides = list(args.overrides)
    if getattr(args, "num_workers", None) is not None:
        low, high = args.num_workers  # see parser.worker_range
        overrides.append(f"scaling.num_workers={high}")
        overrides.append(f"scaling.min_workers={'null' if low is None else low}")
    if getattr(args, "gpu", False):
        overrides.append("scaling.use_gpu=true")
    if getattr(args, "resume_from", None):
        overrides.append(f"run.resume_from={args.resume_from}")
    return load_config(args.config, overrides)


def run_train(args: argparse.Namespace) -> int:
    from detr_ray.evaluation.coco_eval import format_metrics
    from detr_ray.train.launcher import run_training

    config = run_config(args)
    outcome = run_training(config, address=args.address)
    print(f"\n[detr-ray] finished {outcome.epoch} epochs ({outcome.global_step} steps)")
    if outcome.metrics:
        print("[detr-ray] validation metrics:")
        print(format_metrics(outcome.metrics))
    print(f"[detr-ray] latest checkpoint: {outcome.latest_checkpoint}")
    if outcome.best_checkpoint:
        print(f"[detr-ray] best checkpoint:   {outcome.best_checkpoint}")
    print(f"[detr-ray] MLflow run {outcome.mlflow_run_id} in {outcome.tracking_uri}")
    command = dashboard_command(config, str(outcome.tracking_uri))
    print(
        f"[detr-ray] open the dashboard: {command}"
        + ("" if command.startswith("it is") else f"   (then http://127.0.0.1:{DASHBOARD_PORT})")
    )
    return 0


def run_config_show(args: argparse.Namespace) -> int:
    """Print the resolved config as YAML: what ``train`` would run, without Ray."""
    from detr_ray.train.prepare import resolved_config

    print(resolved_config(run_config(args)).to_yaml(), end="")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from detr_ray.tune.options import METRIC_ALIASES, SweepOptions
    from detr_ray.tune.space import load_space
    from detr_ray.tune.sweep import run_sweep

    base = load_config(args.config, args.overrides)
    space = load_space(args.space, base.to_dict())
    metric = METRIC_ALIASES.get(args.metric, args.metric)
    options = SweepOptions(
        name=args.name or Path(args.space).stem,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        search=args.search,
        metric=metric,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        resume=args.resume,
        seed=args.seed,
        register_model=args.register_model,
    )
    outcome = run_sweep(base, space, options, address=args.address)
    print(
        f"\n[detr-ray] sweep {options.name!r}: {len(outcome.rows)} trial(s); {outcome.concurrency}"
    )
    for row in outcome.rows:
        values = "  ".join(f"{k}={_short(row[k])}" for k in space.keys)
        print(
            f"  {row['trial']}  {row['status']:<13} epochs {row['epochs']:<3} {values}  "
            f"{options.metric} {_short(row[options.metric])}"
        )
    print(
        f"[detr-ray] table: {storage.without_query(storage.join(outcome.sweep_dir, 'results.csv'))}"
    )
    print(f"[detr-ray] MLflow parent run {outcome.parent_run_id} in {outcome.tracking_uri}")
    if outcome.interrupted:
        print(
            "[detr-ray] interrupted: unfinished trials run again with the same command and --resume"
        )
        return 130
    if outcome.best is None:
        print(f"[detr-ray] no trial reported {options.metric}")
        return 1
    best = outcome.best
    print(f"[detr-ray] best trial {best['trial']}: {options.metric} {_short(best[options.metric])}")
    print(
        f"[detr-ray] its config: {storage.without_query(outcome.best_config_path or '')}  "
        f"(detr-ray train {outcome.best_config_path})"
    )
    print(f"[detr-ray] its checkpoint: {best.get('checkpoint') or best['train_dir']}")
    if best.get("registered_model"):
        print(f"[detr-ray] registered as {best['registered_model']}")
    return 0


def run_dashboard(args: argparse.Namespace) -> int:
    from detr_ray.tracking.dashboard import run_dashboard as serve

    return serve(args.tracking_uri, args.storage_path, args.port)


def dashboard_command(config: ExperimentConfig, uri: str) -> str:
    """The command that shows the MLflow store ``uri`` a run of ``config`` logged
    to, as this shell can run it (the dashboard finds the same default store)."""
    from detr_ray.tracking.store import resolve_tracking_uri

    program = sys.argv[0] if os.sep in sys.argv[0] else "detr-ray"
    if Path(program).name == "__main__.py":  # python -m detr_ray.cli
        program = f"{Path(sys.executable).name} -m detr_ray.cli"
    if uri.startswith(("http://", "https://")):
        return f"it is the MLflow server {uri} (on a cluster: through its SSH forward)"
    storage_path = config.run.storage_path
    if uri != resolve_tracking_uri(None, storage_path):
        return f"{program} dashboard --tracking-uri {uri}"
    if os.path.normpath(storage_path) != default_of(RunConfig, "storage_path"):
        return f"{program} dashboard --storage-path {storage_path}"
    return f"{program} dashboard"


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
