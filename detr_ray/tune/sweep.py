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

import dataclasses
import os
import posixpath
from pathlib import Path
from typing import Any

from detr_ray import storage
from detr_ray.cluster.address import is_local
from detr_ray.cluster.local import choose_cluster
from detr_ray.cluster.resources import (
    TRIAL_DRIVER_CPUS,
    check_cluster_gpus,
    fit_trial_to_cluster,
    trials_at_once,
)
from detr_ray.cluster.session import init_ray, set_ray_env_defaults
from detr_ray.cluster.signals import sigterm_as_sigint
from detr_ray.config import ExperimentConfig
from detr_ray.storage import StorageOptions
from detr_ray.tracking.names import SWEEP_TAG, TRIALS_AT_ONCE_TAG
from detr_ray.tracking.store import tracking_uri_of
from detr_ray.train.prepare import prepare_run
from detr_ray.tune.leftovers import Stock, remove_groups_left_since, take_stock
from detr_ray.tune.options import SweepOptions, check_search
from detr_ray.tune.results import SweepOutcome, finish_sweep
from detr_ray.tune.resume import check_resume, check_resumed_concurrency, record_concurrency
from detr_ray.tune.rungs import check_rungs
from detr_ray.tune.space import SearchSpace
from detr_ray.tune.trial import run_trial, trial_folder


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

    cluster = choose_cluster(address)  # before any slow work: a dead address fails now
    check_search(options, space)
    prepared = prepare_run(base, local_cluster=is_local(address))
    base = prepared.config
    options_storage = base.run.storage
    sweep_dir = storage.join(base.run.storage_path, "sweeps", options.name)
    check_resume(sweep_dir, options.resume, options_storage)
    if options.resume:
        check_rungs(sweep_dir, options_storage)

    set_ray_env_defaults()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's trial table (CLIReporter)
    import ray
    from ray import tune

    init_ray(cluster)
    filesystem, fs_sweep_dir = storage.open_location(sweep_dir, options_storage)
    resources = ray.cluster_resources()
    if base.scaling.use_gpu:
        check_cluster_gpus(base.scaling.num_workers, resources)
    base = fit_trial_to_cluster(base, resources.get("CPU", 0.0))
    at_once, why = trials_at_once(base.scaling, resources, options.max_concurrent)
    check_resumed_concurrency(sweep_dir, options.resume, at_once, options_storage)

    uri = tracking_uri_of(base)
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
        parent.set_tags({SWEEP_TAG: options.name})
    parent.set_tags({TRIALS_AT_ONCE_TAG: str(at_once)})

    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
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
                scheduler=_scheduler(options, base.train.epochs, sweep_dir, options_storage),
                search_alg=searcher,
                trial_dirname_creator=trial_folder,  # the trial's id, as in results.csv
            ),
            run_config=tune.RunConfig(
                name=options.name,
                storage_path=posixpath.dirname(fs_sweep_dir),
                storage_filesystem=filesystem,
                progress_reporter=_reporter(space, options),
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        record_concurrency(sweep_dir, at_once, options_storage)
    before = take_stock()
    try:
        with sigterm_as_sigint():  # Tune stops its trials and saves the sweep's state
            grid = tuner.fit()
    except BaseException:
        parent.finish("FAILED")
        raise
    finally:
        _remove_leftovers(before)
    return finish_sweep(grid, base, space, options, sweep_dir, parent, why)


def _remove_leftovers(before: Stock) -> None:
    """Remove what stopped trials left on this job (:mod:`detr_ray.tune.leftovers`)."""
    try:
        removed = remove_groups_left_since(before)
    except Exception:  # Ray itself is gone (the error that ended fit says why): so are its groups
        return
    if removed:
        print(
            f"[detr-ray] removed {removed} placement group(s) that the Train runs of "
            "stopped trials left behind",
            flush=True,
        )


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


def _scheduler(
    options: SweepOptions, max_epochs: int, sweep_dir: str, storage_options: StorageOptions
) -> Any:  # ResumableASHA | None
    if options.scheduler == "fifo":
        return None
    from detr_ray.tune.asha import ResumableASHA

    return ResumableASHA(
        sweep_dir,  # its rungs are kept there: a resumed sweep judges against them
        storage_options,
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


def _sweep_params(space: SearchSpace, options: SweepOptions) -> dict:
    params = {f"sweep.{k}": v for k, v in dataclasses.asdict(options).items() if k != "resume"}
    params["sweep.space"] = space.source
    params["sweep.loss_weights"] = space.loss_weights
    params |= {f"space.{p.key}": p.describe() for p in space.params}
    return params
