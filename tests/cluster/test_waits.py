"""No silent waits: every wait before training has a sentence and a deadline.

``detr-ray train`` as a user runs it (a subprocess, from the repository root):
on a fresh local Ray in a Ray temp folder of the test's own (a run too big
for the machine; a stale record of a dead cluster there is met by the sweep
of ``tests/cluster/test_sweep_local.py``), and joining the
tier's shared head (``head``, 2 CPUs) with a run that does not fit it now (the
bounded wait, its timeout, a SIGTERM during it).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
CPUS = os.cpu_count() or 1


def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    """``detr-ray train`` of the tiny config: one epoch of two logged steps."""
    sets = {
        "train.epochs": 1,
        "train.max_steps_per_epoch": 2,
        "train.log_every": 1,
        "data.val_max_images": 8,
        "data.synthetic.num_train": 32,
        "data.synthetic.num_val": 8,
        "data.synthetic.root": tmp_path / "shapes",
        "data.train_ann": tmp_path / "shapes/annotations/train.json",
        "data.train_images": tmp_path / "shapes/train",
        "data.val_ann": tmp_path / "shapes/annotations/val.json",
        "data.val_images": tmp_path / "shapes/val",
        "run.storage_path": tmp_path / "runs",
        "tracking.log_images": 0,
        "tracking.system_metrics_every": 0,
    }
    args = [sys.executable, "-m", "detr_ray.cli", "train", str(ROOT / "configs/shapes_tiny.yaml")]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args + list(extra)


def _local_env(ray_tmp: Path) -> dict:
    """A user's shell with no Ray address: the command starts (or finds) a local Ray."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    return env | {"RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0"}


def _mlflow_run(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("detr-ray")
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def test_a_run_a_fresh_local_ray_can_never_hold_is_refused_at_once(tmp_path):
    """More workers than this machine's CPUs: refused before any worker starts,
    naming both numbers and the keys, in well under a minute."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))
    started = time.monotonic()
    out = subprocess.run(
        _train_args(tmp_path, "--num-workers", str(CPUS + 1)),
        cwd=tmp_path,
        env=_local_env(ray_tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode != 0 and took < 60, (took, out.stdout[-2000:], out.stderr[-2000:])
    message = out.stderr
    assert f"the run needs {CPUS + 1} worker(s) x 1 CPU" in message, message[-2000:]
    assert f"the cluster has {CPUS} CPU(s) in total" in message
    assert "--num-workers" in message and "scaling.cpus_per_worker" in message
    assert "RayTrainWorker" not in out.stdout + out.stderr  # no worker ever started


def _join_head(head, tmp_path: Path, *extra: str) -> list[str]:
    return _train_args(tmp_path, "--address", head.gcs, "--num-workers", "3", *extra)


def test_a_run_that_does_not_fit_a_joined_cluster_waits_then_gives_up_saying_why(head, tmp_path):
    """A joined cluster may grow: the wait is legitimate, but it says what it
    waits for, and ends at scaling.start_timeout_s with that sentence; the run
    is marked FAILED in MLflow with the reason."""
    started = time.monotonic()
    out = head.run(
        *_join_head(head, tmp_path, "--set", "scaling.start_timeout_s=4"),
        timeout=120,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(head.token),
    )
    took = time.monotonic() - started
    assert out.returncode != 0 and took < 60, (took, out.stdout[-2000:], out.stderr[-2000:])
    pending = re.compile(
        r"waiting for the run's workers: the run needs 3 worker\(s\) x 1 CPU but the cluster "
        r"has [\d.]+ CPU\(s\) free"
    )
    assert pending.search(out.stdout), out.stdout[-2000:]  # said as the wait began
    assert pending.search(out.stderr) and "scaling.start_timeout_s" in out.stderr
    run = _mlflow_run(tmp_path)
    assert run.info.status == "FAILED"
    assert pending.search(run.data.tags["detr_ray.error"])
    assert run.data.params["scaling.num_workers"] == "3"  # the run's config, as a worker logs it


def test_sigterm_during_the_wait_stops_the_driver_within_seconds(head, tmp_path):
    """``start_timeout_s=0`` waits for ever; SIGTERM (``kill``, a scheduler) still
    ends it within seconds, and its MLflow run is marked KILLED."""
    process = subprocess.Popen(
        _join_head(head, tmp_path, "--set", "scaling.start_timeout_s=0"),
        cwd=tmp_path,
        env=head.env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "waiting for the run's workers" in line:
                assert "of no limit" in line
                break
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    out = "".join(lines) + rest
    # seconds: ~3 here when the machine is idle, up to ~15 when the suite loads its 2 cores
    assert process.returncode != 0 and took < 30, (took, out[-2000:])
    assert "interrupted; no checkpoint was written" in out
    run = _mlflow_run(tmp_path)
    assert run.info.status == "KILLED" and "was stopped" in run.data.tags["detr_ray.ended"]
