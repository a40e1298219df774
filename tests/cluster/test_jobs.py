"""Cluster jobs against a real local Ray head with token authentication on.

The head is the tier's shared one (``head`` in ``conftest.py``); every command
runs as a user would run it: ``detr-ray`` or ``ray`` in a subprocess, from the
repository root.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from detr_ray.checkpoint.files import FOLDER_PATTERN

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = [  # one epoch of two steps, both logged, evaluated on 8 images of a small dataset
    "--set",
    "train.epochs=1",
    "--set",
    "train.max_steps_per_epoch=2",
    "--set",
    "train.log_every=1",
    "--set",
    "train.eval_every=1",
    "--set",
    "data.val_max_images=8",
    "--set",
    "data.synthetic.num_train=32",
]


def _job_id(stdout: str) -> str:
    match = re.search(r"\[detr-ray\] submitted (\S+) to ", stdout)
    assert match, stdout
    return match.group(1)


def _mlflow_run(storage: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("detr-ray")
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def test_submit_follow_trains_the_shipped_spec_and_logs_to_mlflow(head, tmp_path):
    storage = tmp_path / "runs"
    out = head.detr(
        "submit",
        "jobs/train_shapes_local.yaml",
        "--address",
        head.address,
        "--follow",
        "--set",
        f"run.storage_path={storage}",
        "--set",
        "run.name=submitted",
        *TINY,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = _job_id(out.stdout)
    # The job's own output streamed through --follow, then its final status.
    assert "Running entrypoint for job" in out.stdout
    assert "[detr-ray] run 'submitted': 2 worker(s)" in out.stdout
    assert "[detr-ray] finished 1 epochs (2 steps)" in out.stdout
    assert out.stdout.rstrip().endswith(f"[detr-ray] job {job_id} SUCCEEDED")

    client, run = _mlflow_run(storage, "submitted")
    assert run.info.status == "FINISHED"
    for key in ("loss", "d0.loss_cls", "d0.loss_iou", "loss_bbox"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert run.data.params["run.storage_path"] == str(storage)
    assert any((storage / "submitted").glob("epoch0001_step0000002"))

    # The same job through the other commands; the address from RAY_API_SERVER_ADDRESS.
    listed = head.detr("jobs", "list", RAY_API_SERVER_ADDRESS=head.address)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^{job_id}\s+SUCCEEDED", listed.stdout, re.M), listed.stdout
    status = head.detr("jobs", "status", job_id, RAY_ADDRESS=head.address)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED"), status.stdout + status.stderr
    logs = head.detr("jobs", "logs", job_id, "--address", head.address)
    assert "[detr-ray] finished 1 epochs (2 steps)" in logs.stdout


def test_rays_own_job_submit_runs_the_spec_and_a_stopped_job_resubmitted_resumes_its_run(
    head, tmp_path
):
    storage = tmp_path / "runs"
    overrides = [
        "--submission-id",
        "stop-me",
        "--set",
        f"run.storage_path={storage}",
        "--set",
        "run.name=stopped",
        "--set",
        "data.synthetic.num_train=64",
        "--set",
        "data.val_max_images=8",
        "--set",
        "train.log_every=1",
    ]
    # The spec as a `ray job submit` command, run by Ray's own CLI (which, as
    # PLATFORM.md says, needs the token: mode and path in the environment): the
    # demo on fewer images, for minutes, so that it still runs when stopped.
    printed = head.detr(
        "submit",
        "jobs/train_shapes_local.yaml",
        "--print-ray-command",
        "--address",
        head.address,
        *overrides,
        "--set",
        "train.epochs=100",
    )
    assert printed.returncode == 0, printed.stderr
    argv = shlex.split(printed.stdout)
    assert argv[:3] == ["ray", "job", "submit"]
    out = head.run(
        str(BIN / "ray"),
        "job",
        "submit",
        "--no-wait",
        *argv[3:],
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(head.token),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # Past epoch 2's checkpoint (written whole or not at all): watched on disk, not
    # by a `detr-ray jobs logs` process every few seconds (each a second of CPU).
    # A checkpoint on disk is Ray's to resume from only once Ray Train's controller
    # has taken its report; with two on disk, the first surely has been.
    deadline = time.monotonic() + 180
    while not any((storage / "stopped").glob("epoch0002_step*/checkpoint.pt")):
        assert time.monotonic() < deadline, "the job never finished epoch 2"
        time.sleep(0.5)
    stop = head.detr("jobs", "stop", "stop-me", "--address", head.address)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    # --follow on a stopped job ends at once, with the exit code of "stopped".
    follow = head.detr("jobs", "logs", "stop-me", "--follow", "--address", head.address)
    assert follow.returncode == 3, follow.stdout[-2000:] + follow.stderr
    status = head.detr("jobs", "status", "stop-me", "--address", head.address)
    assert status.stdout.startswith("stop-me: STOPPED"), status.stdout
    _, run = _mlflow_run(storage, "stopped")
    assert run.info.status == "KILLED"  # its driver said so as it was stopped
    # The steps a resume can start from: the whole checkpoints the stopped job left.
    # Which one is Ray's: the newest whose report its controller took before the stop.
    saved_steps = {
        int(FOLDER_PATTERN.fullmatch(p.parent.name).group(2))
        for p in (storage / "stopped").glob("epoch*_step*/checkpoint.pt")
    }

    # The same spec again, through detr-ray (its id is taken): it runs as
    # stop-me-2 and resumes the run, here to a shorter end that its checkpoints
    # have already passed.
    again = head.detr(
        "submit",
        "jobs/train_shapes_local.yaml",
        "--address",
        head.address,
        *overrides,
        "--set",
        "train.epochs=1",
        "--set",
        "tracking.register_model=null",
        "--follow",
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    assert "job stop-me ended STOPPED: submitting it again as stop-me-2" in again.stdout
    client, resumed = _mlflow_run(storage, "stopped")  # the same, one run
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    # It resumed once, from one of those checkpoints. Read from MLflow, not from the
    # job's log: the worker's "resumed at epoch" line reaches the log through Ray's
    # log monitor, which can still hold it when a job this short ends (seen in CI).
    redone = client.get_metric_history(run.info.run_id, "restart/steps_redone")
    assert len(redone) == 1 and redone[0].step in saved_steps, (redone, saved_steps)


def test_authentication_and_unreachable_addresses_fail_clearly(head):
    # No token anywhere (RAY_AUTH_TOKEN_PATH empty, no ~/.ray/auth_token): what to set.
    out = head.detr("jobs", "list", "--address", head.address, RAY_AUTH_TOKEN_PATH="")
    assert out.returncode == 1
    assert "requires token authentication" in out.stderr
    assert "no token was found: set RAY_AUTH_TOKEN_PATH" in out.stderr
    # A wrong token: which one was rejected.
    out = head.detr("jobs", "list", "--address", head.address, RAY_AUTH_TOKEN="0" * 64)
    assert out.returncode == 1 and "the token from RAY_AUTH_TOKEN was rejected" in out.stderr
    # The token in ~/.ray/auth_token is found without any environment variable.
    home_token = head.root / "home" / ".ray" / "auth_token"
    home_token.parent.mkdir(exist_ok=True)
    home_token.write_text(head.token.read_text())
    try:
        out = head.detr("jobs", "list", "--address", head.address, RAY_AUTH_TOKEN_PATH="")
        assert out.returncode == 0, out.stderr
    finally:
        home_token.unlink()
    # Nothing listening: a clear error within seconds, naming the address and its source.
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    out = head.detr("submit", "jobs/train_shapes_local.yaml", "--address", closed)
    assert time.monotonic() - started < 20
    assert out.returncode == 1
    assert f"cannot reach the Ray cluster at {closed} (from --address)" in out.stderr
    out = head.detr("jobs", "list", RAY_ADDRESS=closed)
    assert f"cannot reach the Ray cluster at {closed} (from RAY_ADDRESS)" in out.stderr
    # An unknown job id is the Jobs API's 404, said plainly.
    out = head.detr("jobs", "status", "no-such-job", "--address", head.address)
    assert out.returncode == 1 and "no-such-job does not exist" in out.stderr


def test_follow_of_a_failing_job_exits_1_and_says_why(head, tmp_path):
    spec = tmp_path / "fails.yaml"
    spec.write_text('entrypoint: python -c "raise SystemExit(3)"\nsubmission_id: fails-1\n')
    out = head.detr("submit", str(spec), "--address", head.address, "--follow")
    assert out.returncode == 1, out.stdout + out.stderr
    # Ray's status message, printed by --follow after the (empty) log stream.
    assert "[detr-ray] fails-1: Job entrypoint command failed with exit code 3" in out.stdout
    assert out.stdout.rstrip().endswith("[detr-ray] job fails-1 FAILED")


def test_the_one_private_ray_api_still_refreshes_the_auth_mode():
    """``refresh_ray_auth_mode`` uses ``ray._raylet.Config.initialize`` (Ray 2.60).
    If an upgrade removes it or stops it re-reading RAY_AUTH_MODE, this fails."""
    code = (
        "import os, ray._raylet\n"
        "from ray._private.authentication.authentication_utils import is_token_auth_enabled\n"
        "from detr_ray.jobs.client import refresh_ray_auth_mode\n"
        "before = is_token_auth_enabled()\n"
        "os.environ['RAY_AUTH_MODE'] = 'token'\n"
        "cached = is_token_auth_enabled()\n"
        "refresh_ray_auth_mode()\n"
        "print(before, cached, is_token_auth_enabled())\n"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]
