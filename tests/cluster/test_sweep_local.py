"""A sweep on a fresh local Ray of its own (``detr-ray tune`` without ``--address``),
started past the stale record of a dead one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_a_sweep_without_max_concurrent_fits_the_machine(tmp_path):
    """A sweep of trials of 2 workers each, with no --max-concurrent, on this
    machine's own fresh Ray (2 CPUs): one trial at a time, and both finish. (Two
    trials admitted together would start worker groups that can never all be
    placed: the deadlock this guards against.)

    The Ray temp folder holds the record of a Ray killed hard (``ray.init()``
    alone would retry its dead address for ever): the command names the file
    and the address, starts a fresh Ray and sweeps."""
    storage = tmp_path / "runs"
    command = [
        sys.executable,
        "-m",
        "detr_ray.cli",
        "tune",
        str(ROOT / "configs" / "shapes_tiny.yaml"),
        "--space",
        str(ROOT / "tune_spaces" / "bg_cls_weight.yaml"),
        "--num-samples",
        "2",
        "--set",
        "train.epochs=2",
        "--set",
        "train.max_steps_per_epoch=2",
        "--set",
        f"run.storage_path={storage}",
        "--set",
        f"data.synthetic.root={tmp_path / 'shapes'}",
        "--set",
        f"data.train_ann={tmp_path / 'shapes/annotations/train.json'}",
        "--set",
        f"data.train_images={tmp_path / 'shapes/train'}",
        "--set",
        f"data.val_ann={tmp_path / 'shapes/annotations/val.json'}",
        "--set",
        f"data.val_images={tmp_path / 'shapes/val'}",
        "--set",
        "data.synthetic.num_train=64",
        "--set",
        "data.synthetic.num_val=8",
        "--set",
        "tracking.log_images=0",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: Ray's socket paths
    env["RAY_TMPDIR"] = str(ray_tmp)
    (ray_tmp / "ray").mkdir()
    dead = f"127.0.0.1:{free_port()}"
    record = ray_tmp / "ray" / "ray_current_cluster"
    record.write_text(dead)
    out = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    warning = next(x for x in (out.stdout + out.stderr).splitlines() if "does not answer" in x)
    assert str(record) in warning and dead in warning and "ray stop --force" in warning
    cpus = os.cpu_count() or 1
    if cpus >= 2.01:  # the trial fits as configured: 2 workers x 1 CPU
        expected = f"{int(cpus // 2.01)} trial(s) at once: each needs 2.01 CPUs (2 workers x 1 "
    else:  # 2 CPUs: the workers are given 0.99 CPU each so that one trial fits
        expected = "1 trial(s) at once: each needs 1.99 CPUs (2 workers x 0.99 "
    assert expected in out.stdout, out.stdout[-2000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith("  ") and "finished" in x]
    assert len(lines) == 2, out.stdout[-2000:]
    # each trial logged every decoder layer's losses at its epochs' last steps
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("detr-ray")
    children = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''")
    assert len(children) == 2
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "d0.loss_cls")]
        assert sorted(steps) == [2, 4]
        assert "val/AP" in child.data.metrics
