"""Joining or starting the Ray cluster a command runs on (Ray is imported inside).

``train`` and ``tune`` settle the cluster first (:func:`detr_ray.cluster.local.choose_cluster`,
no Ray), check everything else, then call :func:`init_ray`.
"""

from __future__ import annotations

import os
import socket
import sys

from detr_ray.cluster.local import ClusterChoice

# Quiet, single-copy worker output; no usage reporting. Users may override.
RAY_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def set_ray_env_defaults() -> None:
    """:data:`RAY_ENV_DEFAULTS` in this process's environment, unless set."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def init_ray(choice: ClusterChoice) -> bool:
    """Join the cluster ``choice`` names, or start one on this machine; returns
    whether it started one (a cluster that cannot grow).

    Does nothing if this process is already connected (a sweep's trial, a
    notebook, a test's session): ``False``. A stale record is warned about in
    one line first.

    A cluster started here gets its dashboard on a free port chosen here, and
    every Ray worker of the job learns it (``RAY_API_SERVER_ADDRESS`` in the
    job's runtime env). Ray Train 2.60's placement-group cleaner asks the State
    API of "the" local Ray; with a second Ray instance on the machine (another
    run, a notebook) it finds two, gives up, and a Train run that Tune stopped
    keeps its workers' CPUs reserved forever: the next trial never starts.
    """
    import ray

    if ray.is_initialized():
        return False
    if choice.stale:
        print(f"[detr-ray] warning: {choice.stale}", file=sys.stderr, flush=True)
    print(f"[detr-ray] {choice.line}", flush=True)
    if not choice.starts_here:
        ray.init(address=choice.address, log_to_driver=True)
        return False
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(
        address="local",  # a new Ray, whatever RAY_ADDRESS or a stale record says
        include_dashboard=True,
        dashboard_port=port,
        log_to_driver=True,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    )
    return True
