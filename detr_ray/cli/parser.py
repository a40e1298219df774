"""The ``detr-ray`` argument tree: every command, flag and default.

Defaults that a config dataclass or the sweep options own are read from them
(:func:`detr_ray.schema.default_of`); ``--help`` of every command shows them.
Commands run a function of :mod:`~detr_ray.cli.run`, :mod:`~detr_ray.cli.tools`
or :mod:`~detr_ray.cli.jobs`; those import Ray, MLflow and torch only inside,
so building this tree is instant.
"""

from __future__ import annotations

import argparse
from typing import Any

from detr_ray import __version__
from detr_ray.cli import jobs, run, tools
from detr_ray.config import RunConfig, SyntheticDataConfig, TrainConfig
from detr_ray.schema import choices_of, default_of
from detr_ray.tune.options import METRIC_ALIASES, METRICS, SCHEDULERS, SEARCHERS, SweepOptions

CLUSTER_HELP = "Ray cluster address, e.g. 10.0.0.5:6379 (default: RAY_ADDRESS, else a local Ray)"
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda if this machine has one, else cpu)"
JOBS_HELP = (
    "Ray Jobs API address, e.g. http://127.0.0.1:8265 (default: "
    "RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local cluster)"
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default (but not for flags whose default is 'unset')."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detr-ray", description="Train DETR detectors on Ray.", formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"detr-ray {__version__}")
    commands = parser.add_subparsers(title="commands")

    def command(group: Any, name: str, help: str, action: Any) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)
        sub.set_defaults(run=action)
        return sub

    _training(commands, command)
    _recipe(commands, command)
    _data_and_model(commands, command)
    _evaluation(commands, command)
    _cluster(commands, command)
    return parser


def _training(commands: Any, command: Any) -> None:
    train = command(commands, "train", "train a DETR on Ray Train workers", run.run_train)
    _config_flags(train)
    train.add_argument("--address", help=CLUSTER_HELP)

    show = commands.add_parser("config", help="inspect experiment configs").add_subparsers(
        title="config commands"
    )
    config_show = command(
        show,
        "show",
        "print the resolved config train would run (absolute paths, the number of classes "
        "from the annotations), without starting Ray",
        run.run_config_show,
    )
    _config_flags(config_show)

    sweep = command(
        commands,
        "tune",
        "sweep config keys (matching costs, bg_cls_weight...) with Ray Tune",
        run.run_tune,
    )
    sweep.add_argument("config", help="the base experiment YAML")
    sweep.add_argument(
        "--space", required=True, help="search space YAML, e.g. tune_spaces/joint.yaml"
    )
    _set_flag(sweep, "override a base config key (repeatable)")
    sweep.add_argument("--name", help="sweep name (default: the space file's name)")
    sweep.add_argument(
        "--num-samples",
        type=int,
        default=default_of(SweepOptions, "num_samples"),
        help="trials to sample (times the grid)",
    )
    sweep.add_argument(
        "--max-concurrent",
        type=int,
        help="at most this many trials at once (default, and upper bound: as many as the "
        "cluster holds whole, workers included)",
    )
    sweep.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=default_of(SweepOptions, "scheduler"),
        help="asha stops weak trials early; fifo runs every trial to the end",
    )
    sweep.add_argument(
        "--search",
        choices=SEARCHERS,
        default=default_of(SweepOptions, "search"),
        help="how trials' values are chosen",
    )
    sweep.add_argument(
        "--metric",
        choices=[*METRICS, *METRIC_ALIASES],
        default=default_of(SweepOptions, "metric"),
        help="what ASHA and the summary rank trials by, named as in MLflow "
        f"({', '.join(f'{old} is accepted for {new}' for old, new in METRIC_ALIASES.items())})",
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
    sweep.add_argument(
        "--register-model",
        metavar="NAME",
        help="register the best trial's best checkpoint as a version of this MLflow model",
    )
    sweep.add_argument("--address", help=CLUSTER_HELP)

    dashboard = command(
        commands, "dashboard", "the MLflow UI for the tracking store", run.run_dashboard
    )
    dashboard.add_argument("--tracking-uri", help="default: the sqlite store in --storage-path")
    dashboard.add_argument(
        "--storage-path", default=default_of(RunConfig, "storage_path"), help="run.storage_path"
    )
    dashboard.add_argument("--port", type=int, default=run.DASHBOARD_PORT, help="port on 127.0.0.1")


def _data_and_model(commands: Any, command: Any) -> None:
    data = commands.add_parser("data", help="dataset tools").add_subparsers(title="data commands")
    synth = command(data, "synth", "generate a synthetic COCO-format dataset", tools.run_synth)
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
    synth.add_argument("--seed", type=int, default=synthetic.seed, help="random seed")
    synth.add_argument(
        "--kind",
        choices=["shapes", "glyphs", "swarm"],
        default=synthetic.kind,
        help="shapes: 3 large outlines (the demo); glyphs: 12 small glyph classes on clutter; "
        "swarm: 20-60 small parts of 24 long-tailed classes on textures",
    )

    check = command(
        data,
        "check",
        "validate a COCO-format set and show what it holds (exit 1 if it would stop training)",
        tools.run_data_check,
    )
    check.add_argument("ann", help="COCO annotation JSON (a path, or s3://, gs://)")
    check.add_argument("images", help="the folder (or bucket prefix) its file_names are in")
    _storage_arguments(check)

    profile = command(
        data,
        "profile",
        "what a COCO set is: objects per image, object sizes (in pixels and in feature "
        "cells of each model family), aspect ratios, classes; reads no image",
        tools.run_data_profile,
    )
    profile.add_argument("ann", help="COCO annotation JSON (a path, or s3://, gs://)")
    profile.add_argument("images", help="the folder (or bucket prefix) its file_names are in")
    _storage_arguments(profile)
    profile.add_argument(
        "--scale",
        type=int,
        help="short side the images are resized to for training (default: the source size)",
    )
    profile.add_argument("--max-size", type=int, help="long-side limit of that resize")
    profile.add_argument("--json", action="store_true", help="print JSON instead of the table")

    model = commands.add_parser("model", help="model presets").add_subparsers(
        title="model commands"
    )
    command(model, "list", "the model presets with their parameter counts", tools.run_model_list)


def _recipe(commands: Any, command: Any) -> None:
    recipe = command(
        commands,
        "recipe",
        "write a config for a dataset and a time budget: profile the data, time a few "
        "training steps of each candidate model, choose (every choice explained in the file)",
        tools.run_recipe,
    )
    recipe.add_argument("--train-ann", required=True, help="training COCO annotation JSON")
    recipe.add_argument("--train-images", required=True, help="training image folder")
    recipe.add_argument("--val-ann", required=True, help="validation COCO annotation JSON")
    recipe.add_argument("--val-images", required=True, help="validation image folder")
    recipe.add_argument(
        "--budget-minutes", type=float, required=True, help="training time the run may take"
    )
    recipe.add_argument("--out", required=True, help="the config file to write (YAML)")
    recipe.add_argument(
        "--num-workers", type=int, default=2, help="Ray Train workers the run will use"
    )
    recipe.add_argument("--gpu", action="store_true", help="one GPU a worker")
    recipe.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker gets")
    recipe.add_argument("--address", help="probe on this Ray cluster (a worker's resources)")
    recipe.add_argument(
        "--probe-steps",
        type=int,
        default=3,
        help="timed training steps a candidate's probe takes (after one warm-up step)",
    )
    recipe.add_argument(
        "--init-from", help="fine-tune this checkpoint (detr-ray, official, Hugging Face folder)"
    )
    recipe.add_argument(
        "--family",
        choices=["detr", "deformable_detr"],
        help="use this model family instead of choosing one (the rest is chosen for it)",
    )
    recipe.add_argument("--name", default="recipe", help="run.name of the config")
    recipe.add_argument("--storage-path", default="runs", help="run.storage_path of the config")
    recipe.add_argument("--seed", type=int, default=42, help="train.seed of the config")


def _evaluation(commands: Any, command: Any) -> None:
    evaluate = command(
        commands,
        "eval",
        "COCO box AP of a checkpoint on a dataset, or of a results file",
        tools.run_eval,
    )
    evaluate.add_argument("--ann", required=True, help="COCO annotation JSON (ground truth)")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--results", help="an existing COCO results JSON to score")
    source.add_argument("--checkpoint", help="a detr-ray or official DETR checkpoint to run")
    evaluate.add_argument("--images", help="image folder (with --checkpoint)")
    evaluate.add_argument("--batch-size", type=int, default=2, help="images per forward pass")
    evaluate.add_argument("--device", help=DEVICE_HELP)
    evaluate.add_argument(
        "--on-bad-image",
        choices=["error", "skip"],
        default="error",
        help="a missing or unreadable image stops the evaluation, or is left out of it",
    )
    evaluate.add_argument(
        "--eval-backend",
        choices=choices_of(TrainConfig, "eval_backend"),
        default=default_of(TrainConfig, "eval_backend"),
        help="COCOeval implementation; auto: faster-coco-eval when installed (same metrics)",
    )
    evaluate.add_argument(
        "--raw-ground-truth",
        action="store_true",
        help="score against the annotation file as it is (pycocotools' numbers); by default "
        "against its boxes as training uses them: clipped to their image, invalid ones dropped",
    )
    evaluate.add_argument(
        "--class-agnostic",
        action="store_true",
        help="also score the boxes with the classes ignored (agnostic/AP ...): AP near 0 "
        "beside a higher agnostic AP means the objects are found but misnamed",
    )
    evaluate.add_argument("--json", action="store_true", help="print the metric dict as JSON")
    eval_cluster = evaluate.add_argument_group("over a Ray cluster (Ray Data), with --checkpoint")
    eval_cluster.add_argument(
        "--cluster",
        action="store_true",
        help="run the model with Ray Data over the cluster (one image at a time per actor, "
        "--batch-size images per actor call): the in-process metrics of --batch-size 1",
    )
    eval_cluster.add_argument(
        "--address", help="the Ray cluster (default: RAY_ADDRESS, else local)"
    )
    eval_cluster.add_argument("--actors", type=int, default=2, help="model actors, at most")
    eval_cluster.add_argument("--gpu", action="store_true", help="one GPU per actor")
    _storage_arguments(eval_cluster)

    predict = command(
        commands, "predict", "draw a checkpoint's detections on images", tools.run_predict
    )
    predict.add_argument("images", nargs="+", help="image files, folders or globs ('a/*.jpg')")
    weights = predict.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", help="detr-ray or official DETR checkpoint")
    weights.add_argument(
        "--model",
        help="a registered MLflow model, models:/NAME@ALIAS or models:/NAME/VERSION",
    )
    predict.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI holding --model (default: MLFLOW_TRACKING_URI, "
        "else the sqlite store in --storage-path)",
    )
    predict.add_argument(
        "--storage-path",
        default="runs",
        help="run.storage_path whose sqlite store holds --model (default: runs)",
    )
    predict.add_argument(
        "--out",
        required=True,
        help="folder for the drawings and detections.json (--cluster: a folder or a bucket "
        "prefix for JSON Lines parts)",
    )
    predict.add_argument(
        "--threshold", type=float, default=0.5, help="minimum score to keep, in [0, 1]"
    )
    predict.add_argument("--device", help=DEVICE_HELP)
    on_cluster = predict.add_argument_group(
        "over a Ray cluster (Ray Data): images from folders, globs or s3://, gs:// prefixes"
    )
    on_cluster.add_argument(
        "--cluster",
        action="store_true",
        help="predict with Ray Data over the cluster; a re-run skips the images --out holds",
    )
    on_cluster.add_argument("--address", help="the Ray cluster (default: RAY_ADDRESS, else local)")
    on_cluster.add_argument("--actors", type=int, default=2, help="model actors, at most")
    on_cluster.add_argument("--batch-size", type=int, default=8, help="images an actor takes")
    on_cluster.add_argument("--gpu", action="store_true", help="one GPU per actor")
    on_cluster.add_argument("--part-size", type=int, default=1000, help="records per part file")
    _storage_arguments(on_cluster)


def _cluster(commands: Any, command: Any) -> None:
    submit = command(
        commands,
        "submit",
        "submit a job spec (jobs/*.yaml) to a Ray cluster's Jobs API",
        jobs.run_submit,
    )
    # `submit` checks the spec's entrypoint against this very parser
    submit.set_defaults(parse_entrypoint=lambda argv: build_parser().parse_args(argv))
    submit.add_argument("job", help="job spec YAML, e.g. jobs/train_shapes_local.yaml")
    submit.add_argument("--address", help=JOBS_HELP)
    submit.add_argument(
        "--follow", action="store_true", help="stream the logs and exit with the job's status"
    )
    _set_flag(submit, "override a key of the entrypoint's config (repeatable)")
    submit.add_argument("--submission-id", help="the job's id (default: the spec's, else Ray's)")
    submit.add_argument(
        "--print-ray-command",
        action="store_true",
        help="print the same submission as a `ray job submit` command; submit nothing",
    )

    group = commands.add_parser("jobs", help="list, inspect and stop jobs on a Ray cluster")
    jobs_commands = group.add_subparsers(title="jobs commands")
    for name, helptext, with_id in (
        ("list", "every job on the cluster, newest first", False),
        ("status", "a job's status and message", True),
        ("logs", "a job's logs (--follow: until it ends)", True),
        ("stop", "stop a running job", True),
    ):
        sub = command(jobs_commands, name, helptext, jobs.run_jobs)
        sub.set_defaults(action=name)
        if with_id:
            sub.add_argument("id", help="submission id (see `detr-ray jobs list`)")
        if name == "logs":
            sub.add_argument("--follow", action="store_true", help="until the job ends")
        sub.add_argument("--address", help=JOBS_HELP)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``train`` that change its config (``config show`` takes them too)."""
    parser.add_argument("config", help="experiment YAML, e.g. configs/shapes_tiny.yaml")
    _set_flag(parser, "override a config key (repeatable)")
    parser.add_argument(
        "--num-workers",
        type=worker_range,
        metavar="N|MIN:MAX",
        help="sets scaling.num_workers; MIN:MAX (e.g. 2:8) also scaling.min_workers: an "
        "elastic run that goes on with at least MIN workers when nodes are lost",
    )
    parser.add_argument("--gpu", action="store_true", help="sets scaling.use_gpu")
    parser.add_argument("--resume-from", help="sets run.resume_from: a checkpoint to continue")


def worker_range(text: str) -> tuple[int | None, int]:
    """``N`` (a fixed size) or ``MIN:MAX`` (elastic) -> (min or None, max)."""
    low, sep, high = text.partition(":")
    try:
        values = (int(low), int(high)) if sep else (None, int(low))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number of workers (4) or MIN:MAX (2:8)"
        ) from None
    if values[1] < 1 or (values[0] is not None and not 1 <= values[0] <= values[1]):
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX")
    return values


def _set_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``/``--region`` of an object store (as run.storage_endpoint/_region)."""
    parser.add_argument(
        "--endpoint", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)"
    )
    parser.add_argument("--region", help="S3 region (default: AWS_REGION, else us-east-1)")
