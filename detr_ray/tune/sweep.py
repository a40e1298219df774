"""Sweeps: one Ray Tune trial per sampled config, each a full Ray Train run.

Layout of a sweep named ``S`` with ``run.storage_path`` ``R``::

    R/sweeps/S/                  Ray Tune's experiment (state, trial folders)
    R/sweeps/S/train/<trial_id>/ each trial's Ray Train run: its checkpoints
    R/sweeps/S/best_config.yaml  the best trial's config, for ``detr-ray train``
    R/sweeps/S/results.csv       one row per trial

MLflow: a parent run for the sweep (found again on ``--resume`` by its
folder), one child run per trial (the ordinary training run, tagged with the
parent) with the same per-decoder-layer losses and COCO metrics as any run.

Each trial is a Tune *function trainable* that fits a ``TorchTrainer``
(Ray Train V2); ``TuneReportCallback`` forwards every Train report (one per
epoch) to Tune, and ASHA's budget is the ``epoch`` those reports carry. A
trial's Train run is named by its trial id, so a resumed sweep continues an
interrupted trial from its last checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detr_ray import storage
from detr_ray.cluster.address import check_cluster_address
from detr_ray.config import ExperimentConfig, ScalingConfig
from detr_ray.data.labels import LabelMap
from detr_ray.errors import ConfigError
from detr_ray.storage import StorageOptions
from detr_ray.tune.space import SearchSpace

if TYPE_CHECKING:
    import pandas

    from detr_ray.tracking.runs import SweepTracker

SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
# What a trial reports each epoch (see detr_ray.train.worker), named as in MLflow: -> mode.
METRICS = {"val/AP": "max", "val/AP50": "max", "loss": "min"}
METRIC_ALIASES = {"val_AP": "val/AP", "val_AP50": "val/AP50"}  # earlier spellings
TRIAL_DRIVER_CPUS = 0.01  # the trial's own process only waits for its Train run
CONCURRENCY_FILE = "detr_ray_sweep.json"  # in the sweep folder: trials at once


@dataclass(frozen=True)
class SweepOptions:
    """How to search: ``detr-ray tune``'s flags."""

    name: str
    num_samples: int = 4
    max_concurrent: int | None = None
    scheduler: str = "asha"
    search: str = "random"
    metric: str = "val/AP"
    grace_period: int = 1  # epochs every trial gets before ASHA may stop it
    reduction_factor: float = 2.0
    resume: bool = False
    seed: int | None = None  # of the random search
    register_model: str | None = None  # register the best trial's best checkpoint as this

    def __post_init__(self):
        def bad(key, value, what):
            raise ConfigError(f"--{key.replace('_', '-')} must be {what}, got {value!r}")

        if not self.name or "/" in self.name:
            bad("name", self.name, "a non-empty name without '/'")
        if self.num_samples < 1:
            bad("num_samples", self.num_samples, ">= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            bad("max_concurrent", self.max_concurrent, ">= 1")
        if self.scheduler not in SCHEDULERS:
            bad("scheduler", self.scheduler, f"one of {SCHEDULERS}")
        if self.search not in SEARCHERS:
            bad("search", self.search, f"one of {SEARCHERS}")
        if self.metric not in METRICS:
            bad("metric", self.metric, f"one of {list(METRICS)}")
        if self.grace_period < 1:
            bad("grace_period", self.grace_period, ">= 1")
        if self.reduction_factor <= 1:
            bad("reduction_factor", self.reduction_factor, "> 1")
        if self.register_model is not None and not self.register_model.strip():
            bad("register_model", self.register_model, "a model name")

    @property
    def mode(self) -> str:
        return METRICS[self.metric]


@dataclass
class SweepOutcome:
    sweep_dir: str  # a local folder or an object-store URI
    interrupted: bool
    rows: list[dict]  # one per trial, as in results.csv
    best: dict | None  # the best row
    best_config_path: str | None
    parent_run_id: str
    tracking_uri: str
    concurrency: str = ""  # how many trials ran at once, and why


def run_sweep(
    base: ExperimentConfig, space: SearchSpace, options: SweepOptions, address: str | None = None
) -> SweepOutcome:
    """Check everything, then run (or resume) a sweep of ``base`` over ``space`` to the end.

    Every check that needs no cluster runs before Ray starts (the base config,
    its data and checkpoints, the search algorithm's package, the sweep folder);
    then the number of trials that fit the cluster at once is set, and only
    then is the MLflow parent run created and the first trial started.
    """
    from detr_ray.tracking.runs import SweepTracker
    from detr_ray.tracking.store import tracking_uri
    from detr_ray.train.launcher import RAY_ENV_DEFAULTS, init_ray
    from detr_ray.train.prepare import check_cluster_gpus, prepare_run

    check_cluster_address(address)  # before any slow work: an unreachable one fails now
    check_search(options, space)
    prepared = prepare_run(base, local_cluster=address in (None, "auto", "local"))
    base = prepared.config
    options_storage = base.run.storage
    sweep_dir = storage.join(base.run.storage_path, "sweeps", options.name)
    _check_resume(sweep_dir, options.resume, options_storage)

    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's trial table (CLIReporter)
    import ray
    from ray import tune

    init_ray(address)
    filesystem, fs_sweep_dir = storage.open_location(sweep_dir, options_storage)
    resources = ray.cluster_resources()
    if base.scaling.use_gpu:
        check_cluster_gpus(base.scaling.num_workers, resources)
    base = fit_trial_to_cluster(base, resources.get("CPU", 0.0))
    at_once, why = trials_at_once(base.scaling, resources, options.max_concurrent)
    _check_resumed_concurrency(sweep_dir, options.resume, at_once, options_storage)

    uri = tracking_uri(base.tracking.uri, base.run.storage_path)
    parent = SweepTracker(
        uri,
        base.tracking.experiment,
        f"sweep {options.name}",
        storage.without_query(sweep_dir),
        params=_sweep_params(space, options),
    )
    if not parent.resumed:
        parent.log_text(base.to_yaml(), "base_config.yaml")
        parent.log_text(
            Path(space.source).read_text() if Path(space.source).is_file() else repr(space),
            "search_space.yaml",
        )
        parent.set_tags({"detr_ray.sweep": options.name})
    parent.set_tags({"detr_ray.trials_at_once": str(at_once)})

    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=base.to_dict(),
            label_map=prepared.label_map.to_dict(),
            space=space,
            train_dir=storage.join(sweep_dir, "train"),
            tracking_uri=uri,
            parent_run_id=parent.run_id,
        ),
        {"cpu": TRIAL_DRIVER_CPUS},
    )
    print(
        f"[detr-ray] sweep {options.name!r} over {space.keys} ({space.source}); "
        f"folder {storage.without_query(sweep_dir)}; MLflow parent run {parent.run_id}\n"
        f"[detr-ray] {why}",
        flush=True,
    )
    if options.resume:
        print("[detr-ray] resuming: finished trials are kept, the others run", flush=True)
        tuner = tune.Tuner.restore(
            fs_sweep_dir,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=filesystem,
        )
    else:
        searcher = _searcher(options, space, at_once)
        # A seeded random search limits concurrency itself (Tune ignores the
        # TuneConfig limit next to it, with a warning).
        seeded = searcher is not None and options.search == "random"
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune_space(space),
            tune_config=tune.TuneConfig(
                metric=options.metric,
                mode=options.mode,
                num_samples=options.num_samples,
                max_concurrent_trials=None if seeded else at_once,
                scheduler=_scheduler(options, base.train.epochs),
                search_alg=searcher,
                trial_dirname_creator=_trial_folder,  # the trial's id, as in results.csv
            ),
            run_config=tune.RunConfig(
                name=options.name,
                storage_path=posixpath.dirname(fs_sweep_dir),
                storage_filesystem=filesystem,
                progress_reporter=_reporter(space, options),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        record = json.dumps({"trials_at_once": at_once}).encode()
        storage.write_bytes(storage.join(sweep_dir, CONCURRENCY_FILE), record, options_storage)
    try:
        grid = tuner.fit()
    except BaseException:
        parent.finish("FAILED")
        raise
    return _finish(grid, base, space, options, sweep_dir, parent, why)


def fit_trial_to_cluster(base: ExperimentConfig, cluster_cpus: float) -> ExperimentConfig:
    """Shrink ``scaling.cpus_per_worker`` so that one trial (its workers plus
    its own driver's share) fits the cluster, e.g. 2 workers x 1 CPU on a
    2-CPU laptop; an unchanged config would wait for resources forever."""
    scaling = base.scaling
    if base.scaling.use_gpu:
        return base
    need = scaling.num_workers * scaling.cpus_per_worker + TRIAL_DRIVER_CPUS
    if need <= cluster_cpus:
        return base
    fitted = math.floor((cluster_cpus - TRIAL_DRIVER_CPUS) / scaling.num_workers * 100) / 100
    if fitted <= 0:
        raise ConfigError(
            f"a trial needs scaling.num_workers={scaling.num_workers} workers but the cluster "
            f"has {cluster_cpus:g} CPUs: lower scaling.num_workers"
        )
    print(
        f"[detr-ray] a trial asks for {need:g} CPUs, the cluster has {cluster_cpus:g}: "
        f"scaling.cpus_per_worker {scaling.cpus_per_worker:g} -> {fitted:g}"
    )
    return dataclasses.replace(base, scaling=dataclasses.replace(scaling, cpus_per_worker=fitted))


def trials_at_once(
    scaling: ScalingConfig, resources: Mapping[str, float], requested: int | None
) -> tuple[int, str]:
    """How many trials can run at once on a cluster with ``resources`` (Ray's
    ``cluster_resources()``), and why, in a sentence.

    Tune does not reserve the worker groups its trials start: a trial admitted
    on its own small share starts a Train run whose workers may never find
    room, and the sweep deadlocks. So a trial counts whole: its workers'
    CPUs (and GPUs) plus its own share. ``requested`` (``--max-concurrent``)
    can lower the number, never raise it past what fits.

    Raises:
        ConfigError: not even one trial fits.
    """
    workers = scaling.num_workers
    cpus = resources.get("CPU", 0.0)
    gpus = resources.get("GPU", 0.0)
    cpu_need = workers * scaling.cpus_per_worker + TRIAL_DRIVER_CPUS
    fits = math.floor(cpus / cpu_need + 1e-9)
    per_worker = scaling.cpus_per_worker
    need = f"{cpu_need:g} CPUs ({workers} workers x {per_worker:g} + {TRIAL_DRIVER_CPUS:g})"
    have = f"{cpus:g} CPUs"
    if scaling.use_gpu:
        fits = min(fits, math.floor(gpus / workers + 1e-9))
        need += f" and {workers} GPUs"
        have += f" and {gpus:g} GPUs"
    if fits < 1:
        raise ConfigError(
            f"one trial needs {need} but the cluster has {have}: lower scaling.num_workers "
            "or scaling.cpus_per_worker, or add nodes"
        )
    at_once = min(fits, requested) if requested else fits
    why = f"{at_once} trial(s) at once: each needs {need}, the cluster has {have}"
    if requested and requested > fits:
        why += (
            f"; --max-concurrent {requested} lowered to {fits}: more trials would start worker "
            "groups that can never all be placed"
        )
    elif requested:
        why += f" (--max-concurrent {requested})"
    return at_once, why


def check_search(options: SweepOptions, space: SearchSpace) -> None:
    """The search algorithm can sample this space and its package is installed."""
    if options.search != "optuna":
        return
    if any(p.kind == "grid" for p in space.params):
        raise ConfigError(
            f"{space.source}: --search optuna cannot sample 'grid' entries; "
            "use 'choice' or --search random"
        )
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--search optuna needs Optuna, which is not installed: pip install -e '.[optuna]' "
            "(or pip install optuna), or use --search random"
        ) from None


# ---------------------------------------------------------------------- the trial
def _trial(
    params: dict,
    base: dict,
    label_map: dict,
    space: SearchSpace,
    train_dir: str,
    tracking_uri: str,
    parent_run_id: str,
) -> None:
    """One trial: the sampled config trained by Ray Train, reported to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from detr_ray.train.launcher import launch
    from detr_ray.train.prepare import PreparedRun

    config = space.apply(base, {key: params[key] for key in space.keys})
    trial_id = ray.tune.get_context().get_trial_id()
    config = dataclasses.replace(
        config,
        run=dataclasses.replace(config.run, name=trial_id, storage_path=train_dir),
        # Only the sweep's best trial is registered (tune --register-model), by the driver.
        tracking=dataclasses.replace(
            config.tracking, uri=tracking_uri, parent_run_id=parent_run_id, register_model=None
        ),
        # ASHA compares trials at every epoch: evaluate every epoch, report once.
        train=dataclasses.replace(config.train, eval_every=1, report_every=None),
    )
    # The sweep's driver checked the base config and its data once, for every trial.
    launch(PreparedRun(config, LabelMap.from_dict(label_map)), callbacks=[TuneReportCallback()])


def to_tune_space(space: SearchSpace) -> dict:
    """Ray Tune's distributions for ``space`` (keys stay dotted)."""
    from ray import tune

    makers = {
        "uniform": tune.uniform,
        "loguniform": tune.loguniform,
        "quniform": tune.quniform,
        "randint": tune.randint,
        "choice": lambda *values: tune.choice(list(values)),
        "grid": lambda *values: tune.grid_search(list(values)),
    }
    return {p.key: makers[p.kind](*p.args) for p in space.params}


def _scheduler(options: SweepOptions, max_epochs: int) -> Any:  # ASHAScheduler | None
    if options.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        # The epoch each report carries, not Tune's iteration count: a trial
        # resumed after an interruption restarts its count but not its epochs.
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=min(options.grace_period, max_epochs),
        reduction_factor=options.reduction_factor,
    )


def _searcher(options: SweepOptions, space: SearchSpace, at_once: int) -> Any:
    """The Tune searcher (None: Tune's own random/grid variant generator)."""
    if options.search == "random":
        if options.seed is None:
            return None
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=options.seed, max_concurrent=at_once)
    check_search(options, space)
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=options.seed)


def _reporter(space: SearchSpace, options: SweepOptions) -> Any:  # ray.tune.CLIReporter
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns={
            "epoch": "epoch",
            options.metric: options.metric,
            "loss": "loss",
        },
        parameter_columns={key: key for key in space.keys},
        max_report_frequency=15,
    )


def _trial_folder(trial: Any) -> str:
    return str(trial.trial_id)


def _check_resumed_concurrency(
    sweep_dir: str, resume: bool, at_once: int, options: StorageOptions
) -> None:
    """A resumed sweep keeps the number of trials at once it was started with
    (Tune restores it): refuse to resume it on a cluster that holds fewer."""
    record = storage.join(sweep_dir, CONCURRENCY_FILE)
    if not resume or storage.kind(record, options) != "file":
        return
    started_with = int(json.loads(storage.read_bytes(record, options))["trials_at_once"])
    if started_with > at_once:
        raise ConfigError(
            f"the sweep in {storage.without_query(sweep_dir)} was started running "
            f"{started_with} trials at once and Tune resumes it so; this cluster holds "
            f"{at_once}: resume it on a cluster as large as the first, or start a new sweep "
            "(another --name)"
        )


def _check_resume(sweep_dir: str, resume: bool, options: StorageOptions) -> None:
    state_exists = storage.kind(storage.join(sweep_dir, "tuner.pkl"), options) == "file"
    shown = storage.without_query(sweep_dir)
    if resume and not state_exists:
        raise ConfigError(f"--resume: no sweep to resume in {shown}; drop --resume to start")
    if not resume and storage.kind(sweep_dir, options) != "missing":
        raise ConfigError(
            f"a sweep already exists in {shown}: add --resume to continue it, or pick "
            "another --name"
        )


def _sweep_params(space: SearchSpace, options: SweepOptions) -> dict:
    params = {f"sweep.{k}": v for k, v in dataclasses.asdict(options).items() if k != "resume"}
    params["sweep.space"] = space.source
    params["sweep.loss_weights"] = space.loss_weights
    params |= {f"space.{p.key}": p.describe() for p in space.params}
    return params


# ---------------------------------------------------------------------- the end
def _finish(
    grid: Any,  # ray.tune.ResultGrid
    base: ExperimentConfig,
    space: SearchSpace,
    options: SweepOptions,
    sweep_dir: str,
    parent: SweepTracker,
    concurrency: str,
) -> SweepOutcome:
    """Results table, best config, plots; early-stopped children marked KILLED."""
    children = parent.child_runs()  # trial id (the child's run name) -> (run id, status)
    rows: list[dict[str, Any]] = []
    interrupted = False
    # Tune's public record of the sweep: one Result per trial (its folder is
    # named by its trial id), with its sampled config, last result, error and
    # metric history.
    for result in grid:
        metrics = result.metrics or {}
        trial_id = posixpath.basename(str(result.path).rstrip("/"))
        epochs = int(metrics.get("epoch", 0) or 0)
        done = bool(metrics.get("done"))
        status = _status(result.error is not None, done, epochs, base.train.epochs)
        interrupted |= status == "unfinished"
        run_id, run_status = children.get(trial_id, (None, None))
        # Tune stops a trial right after the report that ends it (ASHA at max_t
        # too), often before its Train run closes its MLflow run: close it here.
        if run_id is not None and run_status == "RUNNING" and status == "stopped early":
            parent.end_child(run_id, "KILLED", {"detr_ray.stopped_early": "true"})
        elif run_id is not None and run_status == "RUNNING" and status == "finished":
            parent.end_child(run_id, "FINISHED", {})
        sampled = {key: (result.config or {}).get(key) for key in space.keys}
        rows.append(
            {
                "trial": trial_id,
                "status": status,
                "epochs": epochs,
                **sampled,
                options.metric: _best_value(result.metrics_dataframe, options),
                "last_loss": metrics.get("loss"),
                "mlflow_run_id": run_id,
                "train_dir": storage.without_query(storage.join(sweep_dir, "train", trial_id)),
            }
        )
    ranked = [r for r in rows if r[options.metric] is not None]
    sign = 1 if options.mode == "max" else -1
    best = max(ranked, key=lambda r: sign * r[options.metric]) if ranked else None
    best_config_path = None
    table = _csv(rows)
    storage.write_bytes(storage.join(sweep_dir, "results.csv"), table.encode(), base.run.storage)
    parent.log_text(table, "results.csv")
    if best is not None:
        best_config = _best_config(base, space, best, options)
        best_config_path = storage.join(sweep_dir, "best_config.yaml")
        storage.write_bytes(best_config_path, best_config.to_yaml().encode(), base.run.storage)
        parent.log_text(best_config.to_yaml(), "best_config.yaml")
        best["checkpoint"] = parent.child_tag(best["mlflow_run_id"], "best_checkpoint")
        parent.set_tags(
            {
                "best_trial": str(best["trial"]),
                f"best_{options.metric}": f"{best[options.metric]:.4f}",
            }
        )
        if options.register_model and best["checkpoint"]:
            best["registered_model"] = _register_best(parent, best, options.register_model, base)
    parent.log_sweep_plot(rows, space.keys, options.metric)
    parent.finish("KILLED" if interrupted else "FINISHED")
    return SweepOutcome(
        sweep_dir=sweep_dir,
        interrupted=interrupted,
        rows=rows,
        best=best,
        best_config_path=best_config_path,
        parent_run_id=parent.run_id,
        tracking_uri=parent.uri,
        concurrency=concurrency,
    )


def _register_best(parent: SweepTracker, best: dict, name: str, base: ExperimentConfig) -> str:
    """The best trial's best checkpoint as a new version of ``name`` (in the trial's run)."""
    from detr_ray.tracking.registry import register_checkpoint

    val_ap = float(parent.child_tag(best["mlflow_run_id"], "best_val_AP") or "-1")
    version = register_checkpoint(
        parent.uri, best["mlflow_run_id"], best["checkpoint"], name, val_ap, base.run.storage
    )
    model = f"models:/{name}/{version}"
    parent.set_tags({"detr_ray.registered_model": model})
    return model


def _status(errored: bool, done: bool, epochs_done: int, epochs: int) -> str:
    """A trial's outcome. Tune marks ``done`` the last result of a trial that
    returned or that its scheduler stopped; a sweep interrupted by Ctrl-C
    leaves its running trials without it (and pending ones without results)."""
    if errored:
        return "error"
    if not done:
        return "unfinished"
    return "finished" if epochs_done >= epochs else "stopped early"


def _best_value(history: pandas.DataFrame | None, options: SweepOptions) -> float | None:
    if history is None or options.metric not in history:
        return None
    values = [
        v for v in history[options.metric].tolist() if v is not None and math.isfinite(v) and v >= 0
    ]
    if not values:
        return None
    return max(values) if options.mode == "max" else min(values)


def _best_config(
    base: ExperimentConfig, space: SearchSpace, best: dict, options: SweepOptions
) -> ExperimentConfig:
    """The best trial's config as a normal run of its own."""
    config = space.apply(base.to_dict(), {key: best[key] for key in space.keys})
    return dataclasses.replace(
        config, run=dataclasses.replace(config.run, name=f"{options.name}-best")
    )


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


__all__ = ["METRICS", "SweepOptions", "SweepOutcome", "run_sweep", "to_tune_space"]
