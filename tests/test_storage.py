"""Runs in object storage: a real S3 API (moto's server) on a loopback port.

The server is started by this module on 127.0.0.1 and stopped by its handle;
nothing here reaches any other address. Training checkpoints to the bucket,
is interrupted and resumed from it, a sweep stores its trials there, and
``predict`` and ``eval`` read the best checkpoint from it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer

from detr_ray import storage
from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.data.synthetic import generate
from detr_ray.storage import StorageOptions
from detr_ray.train.launcher import run_training

from experiments import run_cli_reporting_ray, tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "detr-runs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """An S3 API on 127.0.0.1 holding the bucket ``detr-runs``; yields its endpoint."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _objects(endpoint: str, prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = (o["Key"] for page in pages for o in page.get("Contents", []))
    return sorted(k for k in keys if not k.endswith("/"))  # not pyarrow's folder markers


def test_the_storage_api_on_s3_and_on_disk(s3, tmp_path):
    options = StorageOptions(endpoint=s3)
    for root in (f"s3://{BUCKET}/api", str(tmp_path / "api")):
        location = storage.join(root, "a", "b.txt")
        assert storage.kind(location, options) == "missing"
        storage.write_bytes(location, b"hello", options)
        assert storage.read_bytes(location, options) == b"hello"
        assert storage.kind(location, options) == "file"
        assert storage.kind(storage.join(root, "a"), options) == "folder"
        assert storage.list_folder(storage.join(root, "a"), options) == ["b.txt"]
        storage.delete(location, options)
        assert storage.kind(location, options) == "missing"
    # the endpoint can also ride in the URI itself (pyarrow's syntax)
    in_uri = f"s3://{BUCKET}/api/c.txt?endpoint_override={s3}&region=us-east-1"
    storage.write_bytes(in_uri, b"x")
    assert _objects(s3, "api/") == ["api/c.txt"]
    assert storage.without_query(in_uri) == f"s3://{BUCKET}/api/c.txt"
    assert storage.join(f"s3://{BUCKET}/p?region=x", "q") == f"s3://{BUCKET}/p/q?region=x"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=2, size=64, seed=6)


def _s3_config(shapes, s3, tmp_path, name, **sections) -> ExperimentConfig:
    raw = tiny_experiment(shapes, f"s3://{BUCKET}/runs", name, **sections)
    raw["run"]["storage_endpoint"] = s3
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "log_images": 0}
    return ExperimentConfig.from_dict(raw)


@pytest.mark.usefixtures("ray_session")
def test_training_checkpoints_to_s3_resumes_from_it_and_serves_predict_and_eval(
    shapes, s3, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a relative "s3:" folder would appear here
    first = run_training(_s3_config(shapes, s3, tmp_path, "s3run", train={"epochs": 1}))
    assert first["latest_checkpoint"] == f"s3://{BUCKET}/runs/s3run/epoch0001_step0000002"
    assert "runs/s3run/epoch0001_step0000002/checkpoint.pt" in _objects(s3, "runs/s3run/")
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # no local "s3:" dir
    # the same command with more epochs continues from the bucket's checkpoint
    more = run_training(_s3_config(shapes, s3, tmp_path, "s3run", train={"epochs": 2}))
    assert (more["epoch"], more["global_step"]) == (2, 4)
    client = MlflowClient(more["tracking_uri"])
    run = client.get_run(more["mlflow_run_id"])
    assert run.info.run_id == first["mlflow_run_id"]  # one MLflow run across the resume
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
    # --resume-from and model.init_from take the bucket's checkpoints too
    resumed = run_training(
        _s3_config(
            shapes,
            s3,
            tmp_path,
            "other",
            train={"epochs": 3},
            run={"resume_from": more["latest_checkpoint"]},
        )
    )
    assert resumed["global_step"] == 6
    tuned = run_training(_s3_config(shapes, s3, tmp_path, "finetuned", model={"init_from": best}))
    assert tuned["global_step"] == 2


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_stores_its_trials_in_s3(shapes, s3, tmp_path, monkeypatch):
    import ray

    from detr_ray.tune.space import parse_space
    from detr_ray.tune.sweep import SweepOptions, run_sweep

    monkeypatch.chdir(tmp_path)  # a relative "s3:" folder would appear here
    base = _s3_config(shapes, s3, tmp_path, "base", scaling={"num_workers": 1})
    space = parse_space({"params": {"loss.bg_cls_weight": {"grid": [0.05, 0.2]}}}, "grid")
    options = SweepOptions(name="s3sweep", num_samples=1, scheduler="fifo", metric="loss")
    outcome = run_sweep(base, space, options, address=ray.get_runtime_context().gcs_address)
    assert len(outcome.rows) == 2 and all(r["status"] == "finished" for r in outcome.rows)
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


def test_unreachable_storage_or_a_missing_bucket_stop_before_ray(shapes, s3, tmp_path):
    closed = f"http://127.0.0.1:{_free_port()}"
    data = [
        f"--set=data.{k}={getattr(shapes, k)}"
        for k in ("train_ann", "train_images", "val_ann", "val_images")
    ]
    cases = [
        ("s3://no-such-bucket/runs", s3, "the bucket 'no-such-bucket' does not exist"),
        (f"s3://{BUCKET}/runs", closed, f"s3://{BUCKET}/runs: cannot reach the object store"),
    ]
    for location, endpoint, message in cases:
        argv = [
            "train",
            str(ROOT / "configs" / "shapes_tiny.yaml"),
            "--set=data.synthetic=null",
            *data,
            f"--set=run.storage_path={location}",
            f"--set=run.storage_endpoint={endpoint}",
            f"--set=tracking.uri=sqlite:///{tmp_path / 'm.db'}",
        ]
        out = run_cli_reporting_ray(tmp_path, argv)
        assert out.returncode == 2 and out.stdout.strip().endswith("NO RAY"), out.stderr
        errors = [x for x in out.stderr.splitlines() if x.startswith("detr-ray: error:")]
        assert len(errors) == 1 and message in errors[0], out.stderr
        assert not (tmp_path / "m.db").exists()


def test_no_uri_is_turned_into_a_local_path(shapes, s3, tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    uri = f"s3://{BUCKET}/nothing-here"
    argv = [
        "config",
        "show",
        str(ROOT / "configs" / "shapes_tiny.yaml"),
        "--set",
        f"run.storage_path={uri}",
        "--set",
        f"model.init_from={uri}/w.pt",
        "--resume-from",
        f"{uri}/r.pt",
        "--set",
        "data.synthetic.num_train=4",
    ]
    assert cli_main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["storage_path"] == uri
    assert shown["model"]["init_from"] == f"{uri}/w.pt"
    assert shown["run"]["resume_from"] == f"{uri}/r.pt"
    for command in (
        [
            "predict",
            "--checkpoint",
            f"{uri}/c",
            "--out",
            "o",
            str(next(shapes.val_images.iterdir())),
        ],
        [
            "eval",
            "--ann",
            str(shapes.val_ann),
            "--images",
            str(shapes.val_images),
            "--checkpoint",
            f"{uri}/c",
        ],
    ):
        assert cli_main(command) == 2
        assert f"checkpoint {uri}/c does not exist" in capsys.readouterr().err
    data_uri = [
        "train",
        str(ROOT / "configs" / "shapes_tiny.yaml"),
        "--set",
        f"data.train_ann={uri}/train.json",
    ]
    assert cli_main(data_uri) == 2
    assert "datasets are read from a local or shared file system" in capsys.readouterr().err
    assert not any(p.name.startswith("s3") for p in tmp_path.rglob("*"))
