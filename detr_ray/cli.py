"""``detr-ray``: the command line.

Each subcommand parses its flags here and calls one function of the module
that owns the work; heavy imports (Ray, MLflow, the model) happen inside the
command that needs them, so ``detr-ray --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from detr_ray.config import RunConfig, SyntheticDataConfig
from detr_ray.errors import ClusterError, ConfigError, DetrRayError
from detr_ray.schema import default_of
from detr_ray.tune.sweep import METRICS, SCHEDULERS, SEARCHERS, SweepOptions

DASHBOARD_PORT = 5000
ADDRESS_HELP = (
    "Ray Jobs API address, e.g. http://127.0.0.1:8265 (default: "
    "RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local cluster)"
)


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except DetrRayError as e:  # the user's to fix; anything else is a bug (traceback)
        print(f"detr-ray: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"detr-ray: {e or 'interrupted'}", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detr-ray", description="Train DETR detectors on Ray.")
    commands = parser.add_subparsers(title="commands")

    data = commands.add_parser("data", help="dataset tools").add_subparsers(title="data commands")
    synth = data.add_parser("synth", help="generate the synthetic COCO-format shapes dataset")
    synth.add_argument("--out", required=True, help="output folder")
    synthetic = SyntheticDataConfig()
    synth.add_argument(
        "--train", type=int, default=synthetic.num_train, help="number of training images"
    )
    synth.add_argument(
        "--val", type=int, default=synthetic.num_val, help="number of validation images"
    )
    synth.add_argument(
        "--size", type=int, default=synthetic.size, help="long side of each image, pixels"
    )
    synth.add_argument("--seed", type=int, default=synthetic.seed)
    synth.set_defaults(run=_run_synth)

    evaluate = commands.add_parser(
        "eval", help="COCO box AP of a checkpoint on a dataset, or of a results file"
    )
    evaluate.add_argument("--ann", required=True, help="COCO annotation JSON (ground truth)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", help="an existing COCO results JSON to score")
    source.add_argument("--checkpoint", help="a detr-ray or official DETR checkpoint to run")
    evaluate.add_argument("--images", help="image folder (with --checkpoint)")
    evaluate.add_argument("--batch-size", type=int, default=2)
    evaluate.add_argument("--json", action="store_true", help="print the metric dict as JSON")
    evaluate.set_defaults(run=_run_eval)

    train = commands.add_parser("train", help="train a DETR on Ray Train workers")
    train.add_argument("config", help="experiment YAML, e.g. configs/shapes_tiny.yaml")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    train.add_argument("--num-workers", type=int, help="sets scaling.num_workers")
    train.add_argument("--gpu", action="store_true", help="sets scaling.use_gpu")
    train.add_argument("--resume-from", help="sets run.resume_from: a checkpoint to continue")
    train.set_defaults(run=_run_train)

    sweep = commands.add_parser(
        "tune", help="sweep config keys (matching costs, bg_cls_weight...) with Ray Tune"
    )
    sweep.add_argument("config", help="the base experiment YAML")
    sweep.add_argument(
        "--space", required=True, help="search space YAML, e.g. tune_spaces/joint.yaml"
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key",
    )
    sweep.add_argument("--name", help="sweep name (default: the space file's name)")
    sweep.add_argument(
        "--num-samples",
        type=int,
        default=default_of(SweepOptions, "num_samples"),
        help="trials to sample (x grid)",
    )
    sweep.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as resources allow)"
    )
    sweep.add_argument(
        "--scheduler", choices=SCHEDULERS, default=default_of(SweepOptions, "scheduler")
    )
    sweep.add_argument("--search", choices=SEARCHERS, default=default_of(SweepOptions, "search"))
    sweep.add_argument(
        "--metric",
        choices=list(METRICS),
        default=default_of(SweepOptions, "metric"),
        help="what ASHA and the summary rank trials by",
    )
    sweep.add_argument(
        "--grace-period",
        type=int,
        default=default_of(SweepOptions, "grace_period"),
        help="epochs before ASHA may stop a trial",
    )
    sweep.add_argument(
        "--reduction-factor",
        type=float,
        default=default_of(SweepOptions, "reduction_factor"),
        help="ASHA's reduction factor",
    )
    sweep.add_argument("--seed", type=int, help="seed of the random search")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    sweep.set_defaults(run=_run_tune)

    submit = commands.add_parser(
        "submit", help="submit a job spec (jobs/*.yaml) to a Ray cluster's Jobs API"
    )
    submit.add_argument("job", help="job spec YAML, e.g. jobs/train_shapes_local.yaml")
    submit.add_argument("--address", help=ADDRESS_HELP)
    submit.add_argument(
        "--follow", action="store_true", help="stream the logs and exit with the job's status"
    )
    submit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the entrypoint's config",
    )
    submit.add_argument("--submission-id", help="the job's id (default: the spec's, else Ray's)")
    submit.add_argument(
        "--print-ray-command",
        action="store_true",
        help="print the same submission as a `ray job submit` command; submit nothing",
    )
    submit.set_defaults(run=_run_submit)

    jobs = commands.add_parser("jobs", help="list, inspect and stop jobs on a Ray cluster")
    jobs_commands = jobs.add_subparsers(title="jobs commands")
    for name, helptext, with_id in (
        ("list", "every job on the cluster, newest first", False),
        ("status", "a job's status and message", True),
        ("logs", "a job's logs (--follow: until it ends)", True),
        ("stop", "stop a running job", True),
    ):
        command = jobs_commands.add_parser(name, help=helptext)
        if with_id:
            command.add_argument("id", help="submission id (see `detr-ray jobs list`)")
        if name == "logs":
            command.add_argument("--follow", action="store_true")
        command.add_argument("--address", help=ADDRESS_HELP)
        command.set_defaults(run=_run_jobs, action=name)

    dashboard = commands.add_parser("dashboard", help="the MLflow UI for the tracking store")
    dashboard.add_argument("--tracking-uri", help="default: sqlite store in --storage-path")
    dashboard.add_argument(
        "--storage-path", default=default_of(RunConfig, "storage_path"), help="run.storage_path"
    )
    dashboard.add_argument("--port", type=int, default=DASHBOARD_PORT)
    dashboard.set_defaults(run=_run_dashboard)

    predict = commands.add_parser("predict", help="draw a checkpoint's detections on images")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--checkpoint", required=True, help="detr-ray or official DETR checkpoint")
    predict.add_argument("--out", required=True, help="folder for the PNGs and detections.json")
    predict.add_argument("--threshold", type=float, default=0.5, help="minimum score to keep")
    predict.set_defaults(run=_run_predict)
    return parser


def _run_synth(args) -> int:
    from detr_ray.data.synthetic import generate

    dataset = generate(args.out, args.train, args.val, size=args.size, seed=args.seed)
    print(f"train: {dataset.train_ann}  images: {dataset.train_images}")
    print(f"val:   {dataset.val_ann}  images: {dataset.val_images}")
    return 0


def _run_eval(args) -> int:
    from detr_ray.evaluation import evaluate_results_file, format_metrics

    if args.results:
        metrics, summary = evaluate_results_file(args.ann, args.results)
    else:
        if not args.images:
            raise ConfigError(
                "--checkpoint needs --images, the folder the annotation file refers to"
            )
        from detr_ray.inference import evaluate_checkpoint

        metrics, summary = evaluate_checkpoint(
            args.checkpoint, args.ann, args.images, batch_size=args.batch_size
        )
    if args.json:
        print(json.dumps({k: None if math.isnan(v) else v for k, v in metrics.items()}, indent=2))
    else:
        print(summary)
        print(format_metrics(metrics))
    return 0


def _run_train(args) -> int:
    from detr_ray.config import load_config
    from detr_ray.evaluation import format_metrics
    from detr_ray.train.launcher import run_training

    overrides = list(args.overrides)
    if args.num_workers is not None:
        overrides.append(f"scaling.num_workers={args.num_workers}")
    if args.gpu:
        overrides.append("scaling.use_gpu=true")
    if args.resume_from:
        overrides.append(f"run.resume_from={args.resume_from}")
    config = load_config(args.config, overrides)
    outcome = run_training(config, address=args.address)
    metrics = outcome.get("metrics") or {}
    print(
        f"\n[detr-ray] finished {outcome.get('epoch')} epochs ({outcome.get('global_step')} steps)"
    )
    if metrics:
        print("[detr-ray] validation metrics:")
        print(format_metrics(metrics))
    print(f"[detr-ray] latest checkpoint: {outcome.get('latest_checkpoint')}")
    if outcome.get("best_checkpoint"):
        print(f"[detr-ray] best checkpoint:   {outcome['best_checkpoint']}")
    print(f"[detr-ray] MLflow run {outcome.get('mlflow_run_id')} in {outcome.get('tracking_uri')}")
    command = _dashboard_command(config)
    print(
        f"[detr-ray] open the dashboard: {command}"
        + ("" if command.startswith("it is") else f"   (then http://127.0.0.1:{DASHBOARD_PORT})")
    )
    return 0


def _run_tune(args) -> int:
    from pathlib import Path

    from detr_ray.config import load_config
    from detr_ray.tune.space import load_space
    from detr_ray.tune.sweep import SweepOptions, run_sweep

    base = load_config(args.config, args.overrides)
    space = load_space(args.space, base.to_dict())
    options = SweepOptions(
        name=args.name or Path(args.space).stem,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        search=args.search,
        metric=args.metric,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        resume=args.resume,
        seed=args.seed,
    )
    outcome = run_sweep(base, space, options, address=args.address)
    print(f"\n[detr-ray] sweep {options.name!r}: {len(outcome.rows)} trial(s)")
    for row in outcome.rows:
        values = "  ".join(f"{k}={_short(row[k])}" for k in space.keys)
        print(
            f"  {row['trial']}  {row['status']:<13} epochs {row['epochs']:<3} {values}  "
            f"{options.metric} {_short(row[options.metric])}"
        )
    print(f"[detr-ray] table: {outcome.sweep_dir / 'results.csv'}")
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
        f"[detr-ray] its config: {outcome.best_config_path}  "
        f"(detr-ray train {outcome.best_config_path})"
    )
    print(f"[detr-ray] its checkpoint: {best.get('checkpoint') or best['train_dir']}")
    return 0


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _dashboard_command(config) -> str:
    """The command that shows this config's MLflow store, as this shell can run it."""
    import os

    program = sys.argv[0] if os.sep in sys.argv[0] else "detr-ray"
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")  # as prepare_config
    if uri and uri.startswith(("http://", "https://")):
        return f"it is the MLflow server {uri} (on a cluster: through its SSH forward)"
    if uri:
        return f"{program} dashboard --tracking-uri {uri}"
    if os.path.normpath(config.run.storage_path) != default_of(RunConfig, "storage_path"):
        return f"{program} dashboard --storage-path {config.run.storage_path}"
    return f"{program} dashboard"


def _run_submit(args) -> int:
    import dataclasses
    import shlex

    from detr_ray.jobs.spec import (
        check_entrypoint,
        load_job_spec,
        ray_submit_command,
        with_config_overrides,
    )

    spec = with_config_overrides(load_job_spec(args.job), args.overrides)
    if args.submission_id:
        spec = dataclasses.replace(spec, submission_id=args.submission_id)
    check_entrypoint(spec, _build_parser().parse_args)
    if args.print_ray_command:
        print(shlex.join(ray_submit_command(spec, args.address)))
        return 0

    from detr_ray.jobs import client as jobs

    connection = jobs.connect(args.address)
    job_id = jobs.submit(connection, spec)
    address = connection.get_address()
    print(f"[detr-ray] submitted {job_id} to {address}: {spec.entrypoint}", flush=True)
    if not args.follow:
        print(f"[detr-ray] follow it: detr-ray jobs logs {job_id} --follow --address {address}")
        return 0
    try:
        status = jobs.follow(connection, job_id)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"stopped following; job {job_id} keeps running (detr-ray jobs stop {job_id} "
            f"--address {address} stops it)"
        ) from None
    print(f"[detr-ray] job {job_id} {status}", flush=True)
    return jobs.status_exit_code(status)


def _run_jobs(args) -> int:
    from detr_ray.jobs import client as jobs

    connection = jobs.connect(args.address)
    try:
        if args.action == "list":
            rows = jobs.job_table(connection)
            print(f"{'ID':<32} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT")
            for row in rows:
                print(
                    f"{row['id']:<32} {row['status']:<10} {row['start']:<19} "
                    f"{row['entrypoint'][:80]}"
                )
            if not rows:
                print("(no jobs)")
            return 0
        if args.action == "status":
            info = connection.get_job_info(args.id)
            message = f" ({info.message})" if info.message else ""
            print(f"{args.id}: {info.status.value}{message}")
            return 0
        if args.action == "logs":
            if args.follow:
                return jobs.status_exit_code(jobs.follow(connection, args.id))
            print(connection.get_job_logs(args.id), end="")
            return 0
        stopped = connection.stop_job(args.id)
        print(f"{args.id}: " + ("stop requested" if stopped else "not running (nothing to stop)"))
        return 0
    except RuntimeError as e:  # the Jobs API's answer, e.g. an unknown id
        raise ClusterError(f"{args.action} {getattr(args, 'id', '')}: {e}") from None


def _run_dashboard(args) -> int:
    from detr_ray.dashboard import run_dashboard

    return run_dashboard(args.tracking_uri, args.storage_path, args.port)


def _run_predict(args) -> int:
    from detr_ray.inference import predict_images

    json_path = predict_images(
        args.checkpoint, args.images, args.out, score_threshold=args.threshold
    )
    print(f"wrote {len(args.images)} image(s) and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
