"""Training on real Ray Train workers (a local Ray started once per session).

Each test trains a tiny model on a tiny synthetic dataset for a few steps; the
checks are on what the product promises: N workers train like one through
Ray's seam, against the plain engine in one process (the accelerators and
uneven shares are proved without Ray in
``tests/engine/test_workers_equal_one.py``), a failed worker is survived
without a hole or a repeat in the MLflow history, a resumed run equals an
uninterrupted one, non-finite steps are skipped then stop the run.
"""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from detr_ray.checkpoint import load_checkpoint
from detr_ray.config import ExperimentConfig
from detr_ray.criterion.loss_keys import loss_keys
from detr_ray.errors import DataError, TrainingStopped
from detr_ray.train.hooks import FaultHooks
from detr_ray.train.launcher import run_training

from tests.support.datasets import SHAPE_LABELS
from tests.support.experiments import FIXED_DATA, tiny_experiment
from tests.support.gloo import train_in_processes

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=16, num_val=4, size=64, seed=1)


def tiny_config(shapes, tmp_path, name, **sections) -> ExperimentConfig:
    return ExperimentConfig.from_dict(tiny_experiment(shapes, tmp_path / "runs", name, **sections))


def mlflow_run(outcome):
    client = MlflowClient(outcome.tracking_uri)
    return client, client.get_run(outcome.mlflow_run_id)


def final_weights(outcome):
    return load_checkpoint(outcome.latest_checkpoint)["model"]


def test_two_workers_train_exactly_like_one_with_the_whole_batch(shapes, tmp_path):
    # Through Ray's seam (prepare_model's DDP, its process group, the reports):
    # one optimiser step with 2 Ray Train workers x batch 2 must equal the plain
    # engine in one process with batch 4 on the same 4 images (deterministic
    # data, no dropout; tests/support/gloo.py, Ray's worker minus Ray).
    def config(workers: int, batch: int) -> dict:
        return tiny_experiment(
            shapes,
            tmp_path / "runs",
            f"w{workers}",
            data=FIXED_DATA,
            model={"dropout": 0.0, "num_classes": SHAPE_LABELS.num_classes},
            scaling={"num_workers": workers},
            train={"max_steps_per_epoch": 1, "batch_size": batch},
        )

    two = run_training(ExperimentConfig.from_dict(config(2, 2)))
    (one,) = train_in_processes(1, [config(1, 4)], SHAPE_LABELS, tmp_path / "one")
    a, b = final_weights(two), one["weights"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    # The losses (averaged over workers) and the gradient norm agree too: the
    # Adam step alone is insensitive to a uniform gradient scale, these are not.
    _, run_two = mlflow_run(two)
    (step_one,) = one["steps"]
    for key in ["loss", "loss_cls", "d0.loss_bbox", "loss_iou", "grad_norm"]:
        assert run_two.data.metrics[key] == pytest.approx(step_one[key], rel=1e-5), key
    # the two workers' shares: positives per worker add up to the single worker's
    assert 2 * run_two.data.metrics["positives/mean"] == step_one["positives/mean"]


def _step(metric):
    return metric.step


def test_worker_failure_restarts_from_checkpoint_with_one_continuous_mlflow_run(shapes, tmp_path):
    # 16 images / 2 workers / batch 2 = 4 steps an epoch; step 7 fails once.
    config = tiny_config(
        shapes,
        tmp_path,
        "fails",
        train={"epochs": 3},
        run={"max_failures": 1},
    )
    outcome = run_training(config, hooks=FaultHooks(fail_once_at_step=7))
    assert outcome.status == "completed"
    assert (outcome.epoch, outcome.global_step) == (3, 12)
    assert (tmp_path / "runs" / "fails" / ".injected_failure_7").exists()

    client, run = mlflow_run(outcome)
    runs = client.search_runs([run.info.experiment_id])
    assert len([r for r in runs if r.data.tags.get("detr_ray.run_dir", "").endswith("/fails")]) == 1
    num_layers = config.model.num_decoder_layers
    for key in loss_keys(num_layers):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, 13)), key  # no gap, no repeat
    for key in [
        "grad_norm",
        "lr/other",
        "lr/backbone",
        "positives/mean",
        "positives/min",
        "positives/max",
        "images_per_s",
        "d0.match_changed",
        "val/AP",
        "val/AP50",
    ]:
        assert client.get_metric_history(run.info.run_id, key), key
    assert run.data.params["train.epochs"] == "3" and run.data.params["model.d_model"] == "64"
    # the test's hooks rode beside the experiment, not in it
    assert not any(key.startswith("debug") for key in run.data.params)
    assert set(load_checkpoint(outcome.latest_checkpoint)["config"]) == set(config.to_dict())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "label_map.json", "plots", "val_images"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/decoder_layer_losses.png"
    ]
    assert run.info.status == "FINISHED"


def test_a_resumed_run_equals_an_uninterrupted_one_and_passes_over_a_torn_checkpoint(
    shapes, tmp_path
):
    # 16 images / 1 worker / batch 2 = 8 steps an epoch: checkpoints at steps 8 and 16.
    # One run of 2 epochs straight through; then its latest checkpoint is torn (a
    # write cut short by a dying node) and the same command runs again: it resumes
    # from the newest readable checkpoint, epoch 1's, says which it passed over,
    # and redoes epoch 2 into exactly the straight run's weights.
    def run():  # same name and storage: continues from its latest checkpoint
        config = tiny_config(
            shapes,
            tmp_path,
            "resumed",
            model={"dropout": 0.1},  # random, but reseeded every epoch
            scaling={"num_workers": 1},
            train={"epochs": 2},
        )
        return run_training(config)

    straight = run()
    assert (straight.epoch, straight.global_step) == (2, 16)
    straight_weights = final_weights(straight)
    folder = tmp_path / "runs" / "resumed"
    latest = folder / "epoch0002_step0000016" / "checkpoint.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])

    resumed = run()
    assert resumed.unreadable_checkpoints == ["epoch0002_step0000016"]
    assert resumed.started_at_step == 8  # from epoch 1's checkpoint, the newest readable
    assert (resumed.epoch, resumed.global_step) == (2, 16)
    a = final_weights(resumed)
    assert a.keys() == straight_weights.keys()
    for key in a:
        torch.testing.assert_close(a[key], straight_weights[key], atol=1e-6, rtol=0, msg=key)
    # The redone epoch 2 wrote a good checkpoint in place of the torn one; every
    # checkpoint the run keeps loads.
    kept = sorted(p.name for p in folder.glob("epoch*"))
    assert kept == ["epoch0001_step0000008", "epoch0002_step0000016"]
    for name in kept:
        load_checkpoint(folder / name)
    client, mlflow = mlflow_run(resumed)
    assert mlflow.info.run_id == straight.mlflow_run_id  # one MLflow run across the resume
    steps = [m.step for m in client.get_metric_history(mlflow.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 17))  # the redone steps 9-16 are not logged twice


def test_non_finite_steps_are_skipped_then_stop_the_run(shapes, tmp_path, caplog):
    # step 2 poisoned alone: skipped, training goes on; steps 6-8 in a row with
    # max_nan_steps=2: the run stops at step 8, keeping the epoch-1 checkpoint.
    config = tiny_config(
        shapes,
        tmp_path,
        "diverges",
        train={"epochs": 3, "max_nan_steps": 2},
    )
    with pytest.raises(TrainingStopped, match=r"stopped at step 8 \(epoch 2\).*non-finite") as e:
        run_training(config, hooks=FaultHooks(nan_at_steps=(2, 6, 7, 8)))
    assert "epoch0001_step0000004" in str(e.value)
    checkpoint = load_checkpoint(tmp_path / "runs" / "diverges" / "epoch0001_step0000004")
    assert checkpoint["train_state"]["skipped_steps"] == [2]
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("detr-ray").experiment_id])
    assert run.info.status == "FAILED" and "step 8" in run.data.tags["detr_ray.stopped"]
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert 2 not in history and math.isfinite(history[3])


def test_an_evaluation_error_keeps_the_epoch_and_is_not_retried(shapes, tmp_path):
    # The first evaluation fails with a data error: the epoch's checkpoint is
    # written first, and Ray's restarts (max_failures 2) do not train again
    # into the same error: no epoch-2 checkpoint appears.
    config = tiny_config(
        shapes,
        tmp_path,
        "evalfails",
        train={"epochs": 2},
        run={"max_failures": 2},
    )
    with pytest.raises(DataError, match=r"injected data error while scoring \(fail_scoring\)"):
        run_training(config, hooks=FaultHooks(fail_scoring=True))
    run_dir = tmp_path / "runs" / "evalfails"
    kept = sorted(p.name for p in run_dir.glob("epoch*"))
    assert kept == ["epoch0001_step0000004"]
    assert (run_dir / kept[0] / "checkpoint.pt").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("detr-ray").experiment_id])
    assert run.info.status == "FAILED" and "injected" in run.data.tags["detr_ray.error"]
