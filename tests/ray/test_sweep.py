"""A real Ray Tune sweep of a tiny Deformable DETR: ASHA, MLflow parent/children,
Ctrl-C and resume.

One sweep, two trials (a grid over ``loss.bbox_weight``, with the focal
classification's ``matcher.cls_cost`` and ``loss.focal_alpha`` sampled),
ranked by training loss: a larger box weight scales the loss up. The sweep
runs as ``detr-ray tune`` in a subprocess that gets SIGINT once the first
trial is done; ``--resume`` then runs only the second, and ASHA must stop it
at its first rung, against the rungs the first trial left before the
interruption (Ray Tune's own ASHA forgets them on resume). (DETR's sweeps run in
``tests/ray/test_storage_runs.py`` and ``tests/cluster/test_sweep_local.py``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from detr_ray.config import load_config
from detr_ray.criterion.loss_keys import loss_keys
from detr_ray.data.synthetic import generate
from detr_ray.train.prepare import prepare_run
from detr_ray.tune.options import SweepOptions
from detr_ray.tune.rungs import RUNGS_FILE
from detr_ray.tune.space import load_space
from detr_ray.tune.sweep import run_sweep

from tests.support.experiments import TINY_DEFORMABLE, tiny_experiment
from tests.support.ray_guard import left_behind

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3
GRID = [1.0, 8.0]


def _write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    shapes = generate(tmp_path / "shapes", num_train=8, num_val=4, size=64, seed=3)
    config = tiny_experiment(
        shapes,
        tmp_path / "runs",
        "base",
        model=TINY_DEFORMABLE,
        train={"epochs": EPOCHS, "batch_size": 4},
        scaling={"num_workers": 1},
        tracking={"log_images": 0},
    )
    space = {
        "params": {
            "loss.bbox_weight": {"grid": GRID},
            "matcher.cls_cost": {"loguniform": [0.5, 4.0]},
            "loss.focal_alpha": {"uniform": [0.2, 0.3]},
        }
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return tmp_path / "tiny.yaml", tmp_path / "space.yaml"


def _interrupt_after_one_trial(
    command: list[str], train_dir: Path, log_path: Path
) -> tuple[int, str]:
    """Start the sweep; SIGINT it once the second trial has started."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if train_dir.is_dir() and len(list(train_dir.iterdir())) >= 2:
                break
            time.sleep(0.5)
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=180)
    return code, log_path.read_text()


def _checkpoints(train_dir: Path, trial: str) -> list[str]:
    return sorted(p.name for p in (train_dir / trial).iterdir() if p.name.startswith("epoch"))


@pytest.mark.timeout(1500)  # three Ray Train starts or more; minutes, more on a slow machine
def test_sweep_stops_bad_trials_tracks_children_and_resumes_only_what_was_left(tmp_path):
    import ray

    config_path, space_path = _write_inputs(tmp_path)
    sweep_dir = tmp_path / "runs" / "sweeps" / "costs"
    train_dir = sweep_dir / "train"
    command = [
        sys.executable,
        "-m",
        "detr_ray.cli",
        "tune",
        str(config_path),
        "--space",
        str(space_path),
        "--name",
        "costs",
        "--num-samples",
        "1",
        "--max-concurrent",
        "1",
        "--metric",
        "loss",
        "--seed",
        "0",
        "--address",
        ray.get_runtime_context().gcs_address,
    ]
    code, output = _interrupt_after_one_trial(command, train_dir, tmp_path / "first.log")
    assert code == 130, output[-3000:]
    assert "interrupted" in output
    first = sorted(p.name for p in train_dir.iterdir())[0]
    before = _checkpoints(train_dir, first)
    assert len(before) >= EPOCHS - 1  # kept checkpoints of the finished trial
    assert (sweep_dir / RUNGS_FILE).is_file()  # what ASHA recorded, kept for the resume

    # --resume: the finished trial stays as it is; the second runs.
    base = load_config(config_path)
    space = load_space(space_path, base.to_dict())
    # and the best trial's best checkpoint becomes a registered model
    options = SweepOptions(
        name="costs",
        num_samples=1,
        max_concurrent=1,
        metric="loss",
        resume=True,
        register_model="costs-best",
    )
    outcome = run_sweep(base, space, options)
    assert not outcome.interrupted
    rows = {row["trial"]: row for row in outcome.rows}
    assert len(rows) == len(GRID)
    assert _checkpoints(train_dir, first) == before
    by_weight = sorted(rows.values(), key=lambda r: r["loss.bbox_weight"])
    assert [r["loss.bbox_weight"] for r in by_weight] == GRID
    assert by_weight[0]["status"] == "finished" and by_weight[0]["epochs"] == EPOCHS
    # the trial run after the resume, judged against the first one's rungs
    assert by_weight[1]["status"] == "stopped early" and by_weight[1]["epochs"] < EPOCHS
    assert outcome.best["trial"] == by_weight[0]["trial"]  # the lowest loss

    # MLflow: one parent, exactly two children with their sampled values and
    # every decoder layer's losses; early-stopped children are closed as KILLED.
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.info.run_name for c in children) == sorted(rows)
    num_layers = base.model.num_decoder_layers
    for child in children:
        row = rows[child.info.run_name]
        assert float(child.data.params["loss.bbox_weight"]) == row["loss.bbox_weight"]
        for key in ("matcher.cls_cost", "loss.focal_alpha"):
            assert float(child.data.params[key]) == pytest.approx(row[key])
        assert child.data.params["model.family"] == "deformable_detr"
        for key in loss_keys(num_layers):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps and len(steps) == len(set(steps)), key
        expected = "KILLED" if row["status"] == "stopped early" else "FINISHED"
        assert child.info.status == expected, row
    # registered into the best trial's run, whose status stayed as it was (checked above)
    version = client.get_model_version_by_alias("costs-best", "champion")
    assert outcome.best["registered_model"] == f"models:/costs-best/{version.version}"
    assert version.run_id == outcome.best["mlflow_run_id"]
    assert version.tags["checkpoint"] == outcome.best["checkpoint"]
    assert len(client.search_model_versions("name = 'costs-best'")) == 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "best_config.yaml", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/loss_vs_params.png"
    ]
    assert (sweep_dir / "results.csv").read_text().count("\n") == 3  # header + 2 trials

    # The best config is an ordinary config that passes every check detr-ray
    # train makes before Ray starts (training it again would only repeat a trial).
    best = load_config(outcome.best_config_path)
    assert best.loss.bbox_weight == GRID[0]
    assert best.matcher.cls_cost == pytest.approx(outcome.best["matcher.cls_cost"])
    assert best.tracking.parent_run_id is None
    prepared = prepare_run(best)
    assert prepared.config.model.family == "deformable_detr"
    assert prepared.config.loss.bbox_weight == GRID[0]
    # Ray Train releases the last trials' worker groups after the sweep returns,
    # asynchronously (its cleaner polls the State API): within minutes here.
    assert left_behind(settle_s=240) is None


def test_resuming_a_missing_sweep_or_reusing_a_name_is_an_error(tmp_path):
    from detr_ray.errors import ConfigError

    config_path, space_path = _write_inputs(tmp_path)
    base = load_config(config_path)
    space = load_space(space_path, base.to_dict())
    with pytest.raises(ConfigError, match="no sweep to resume in .*sweeps/nothing"):
        run_sweep(base, space, SweepOptions(name="nothing", resume=True))
    (tmp_path / "runs" / "sweeps" / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists .* add --resume"):
        run_sweep(base, space, SweepOptions(name="taken"))
    # a resumed sweep whose kept ASHA rungs were cut short: named, before Tune starts
    damaged = tmp_path / "runs" / "sweeps" / "damaged"
    damaged.mkdir(parents=True)
    (damaged / "tuner.pkl").write_bytes(b"")
    (damaged / RUNGS_FILE).write_text('{"1.0": {"a": ')
    with pytest.raises(ConfigError, match=rf"damaged/{RUNGS_FILE}: ASHA's records .* delete"):
        run_sweep(base, space, SweepOptions(name="damaged", resume=True))
    with pytest.raises(ConfigError, match="--metric must be one of"):
        SweepOptions(name="x", metric="AP")
