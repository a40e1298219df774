"""Training runs and sweeps in object storage: a real S3 API (moto's server) on loopback.

The server is started by this module on 127.0.0.1 and stopped by its handle.
The dataset is in the bucket too: training reads it there (two workers, the
node cache off, then on), checkpoints to the bucket, is resumed from it, a
sweep stores its trials there, and ``predict`` and ``eval`` read the best
checkpoint from it.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from detr_ray import storage
from detr_ray.checkpoint import load_checkpoint
from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.storage import StorageOptions
from detr_ray.train.launcher import run_training

from tests.support.experiments import tiny_experiment
from tests.support.servers import S3_REGION, s3_keys, s3_server, upload_dataset

BUCKET = "detr-runs"
pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=8, num_val=2, size=64, seed=6)


@pytest.fixture(scope="module")
def data_in_s3(shapes, s3) -> dict:
    """The ``data`` paths of ``shapes``, uploaded to ``s3://detr-runs/shapes/``."""
    return upload_dataset(shapes, f"s3://{BUCKET}/shapes", s3)


def _objects(endpoint: str, prefix: str) -> list[str]:
    return s3_keys(endpoint, BUCKET, prefix)


def _s3_config(shapes, s3, tmp_path, name, data=None, **sections) -> ExperimentConfig:
    raw = tiny_experiment(shapes, f"s3://{BUCKET}/runs", name, **sections)
    raw["data"] |= data or {}
    raw["run"]["storage_endpoint"] = s3
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "log_images": 0}
    return ExperimentConfig.from_dict(raw)


def test_training_checkpoints_to_s3_resumes_from_it_and_serves_predict_and_eval(
    shapes, s3, data_in_s3, tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a relative "s3:" folder would appear here
    # model.init_from takes a checkpoint in the bucket (the run starts from its weights)
    weights = f"s3://{BUCKET}/pretrained/checkpoint.pt"
    storage.write_bytes(weights, tiny_checkpoint[0].read_bytes(), StorageOptions(s3, S3_REGION))
    first = run_training(
        _s3_config(
            shapes, s3, tmp_path, "s3run", data=data_in_s3, train={"epochs": 1},
            model={"init_from": weights},
        )
    )  # fmt: skip
    assert first.latest_checkpoint == f"s3://{BUCKET}/runs/s3run/epoch0001_step0000002"
    assert "runs/s3run/epoch0001_step0000002/checkpoint.pt" in _objects(s3, "runs/s3run/")
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # no local "s3:" dir
    # two Adam steps at lr 1e-3 move no weight of the pretrained model by more than
    # about 2e-3 (a run started from fresh weights would be O(0.1) away)
    trained = load_checkpoint(first.latest_checkpoint, StorageOptions(s3, S3_REGION))["model"]
    for key, value in tiny_checkpoint[1].state_dict().items():
        if value.is_floating_point():
            assert (trained[key] - value).abs().max() < 1e-2, key
    # the same command with more epochs continues from the bucket's checkpoint
    # (a resumed run starts from its own checkpoint, not from model.init_from)
    cache = tmp_path / "node-cache"
    more = run_training(
        _s3_config(
            shapes,
            s3,
            tmp_path,
            "s3run",
            data=data_in_s3 | {"cache_dir": str(cache)},
            train={"epochs": 2},
            model={"init_from": weights},
        )
    )
    assert (more.epoch, more.global_step) == (2, 4)
    # both workers' images, and the validation's, each copied once to the node's disk
    copies = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    expected = {
        f"s3/{BUCKET}/shapes/{path.relative_to(shapes.train_ann.parents[1]).as_posix()}"
        for folder in (shapes.train_images, shapes.val_images)
        for path in folder.iterdir()
    }
    assert copies == expected
    client = MlflowClient(more.tracking_uri)
    run = client.get_run(more.mlflow_run_id)
    assert run.info.run_id == first.mlflow_run_id  # one MLflow run across the resume
    best = run.data.tags["best_checkpoint"]
    assert best.startswith(f"s3://{BUCKET}/runs/s3run/epoch")
    # predict and eval read the best checkpoint from the bucket (endpoint from the environment)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    image = sorted(shapes.val_images.glob("*.png"))[0]
    out = tmp_path / "predicted"
    assert cli_main(["predict", "--checkpoint", best, "--out", str(out), str(image)]) == 0
    assert (out / "detections.json").is_file()
    argv = [
        "eval",
        "--ann",
        str(shapes.val_ann),
        "--images",
        str(shapes.val_images),
        "--checkpoint",
        best,
        "--json",
    ]
    assert cli_main(argv) == 0
    # --resume-from takes the bucket's checkpoints too
    resumed = run_training(
        _s3_config(
            shapes,
            s3,
            tmp_path,
            "other",
            train={"epochs": 3},
            run={"resume_from": more.latest_checkpoint},
        )
    )
    assert resumed.global_step == 6


def test_a_sweep_stores_its_trials_in_s3(shapes, s3, data_in_s3, tmp_path, monkeypatch):
    import ray

    from detr_ray.tune.options import SweepOptions
    from detr_ray.tune.space import parse_space
    from detr_ray.tune.sweep import run_sweep

    monkeypatch.chdir(tmp_path)  # a relative "s3:" folder would appear here
    base = _s3_config(shapes, s3, tmp_path, "base", scaling={"num_workers": 1}, data=data_in_s3)
    # one trial: where a sweep stores things does not depend on how many it runs
    space = parse_space({"params": {"loss.bg_cls_weight": {"grid": [0.2]}}}, "grid")
    options = SweepOptions(name="s3sweep", num_samples=1, scheduler="fifo", metric="loss")
    outcome = run_sweep(base, space, options, address=ray.get_runtime_context().gcs_address)
    assert len(outcome.rows) == 1 and outcome.rows[0]["status"] == "finished"
    keys = _objects(s3, "runs/sweeps/s3sweep/")
    assert "runs/sweeps/s3sweep/results.csv" in keys
    assert "runs/sweeps/s3sweep/best_config.yaml" in keys
    for row in outcome.rows:
        assert row["train_dir"].startswith(f"s3://{BUCKET}/runs/sweeps/s3sweep/train/")
        trial = row["train_dir"].removeprefix(f"s3://{BUCKET}/")
        assert any(k.startswith(f"{trial}/epoch0001") for k in keys), trial
    # the sweep's own artifacts sit beside its sqlite store, not in a local "s3:" folder
    parent = MlflowClient(outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert parent.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())
