"""Object storage through a real S3 API (moto's server) on a loopback port.

The server is started by this module on 127.0.0.1 and stopped by its handle;
nothing here reaches any other address. The storage API on a bucket and on
disk; a bucket that is missing or unreachable stops a run before Ray; no URI
becomes a local path. Training runs and sweeps in a bucket are
``tests/ray/test_storage_runs.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from detr_ray import storage
from detr_ray.cli import main as cli_main
from detr_ray.storage import StorageOptions

from tests.support.experiments import run_cli_cases_reporting_ray
from tests.support.ports import free_port
from tests.support.servers import s3_keys, s3_server

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "detr-runs"


@pytest.fixture(scope="module")
def s3():
    """An S3 API on 127.0.0.1 holding the bucket ``detr-runs``; yields its endpoint."""
    with s3_server(BUCKET) as endpoint:
        yield endpoint


def _objects(endpoint: str, prefix: str) -> list[str]:
    return s3_keys(endpoint, BUCKET, prefix)


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
def shapes(make_shapes):
    return make_shapes(num_train=8, num_val=2, size=64, seed=6)


def test_unreachable_storage_or_a_missing_bucket_stop_before_ray(shapes, s3, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    data = [
        f"--set=data.{k}={getattr(shapes, k)}"
        for k in ("train_ann", "train_images", "val_ann", "val_images")
    ]
    cases = [
        ("s3://no-such-bucket/runs", s3, "the bucket 'no-such-bucket' does not exist"),
        (f"s3://{BUCKET}/runs", closed, f"s3://{BUCKET}/runs: cannot reach the object store"),
    ]
    argvs = [
        [
            "train",
            str(ROOT / "configs" / "shapes_tiny.yaml"),
            "--set=data.synthetic=null",
            *data,
            f"--set=run.storage_path={location}",
            f"--set=run.storage_endpoint={endpoint}",
            f"--set=tracking.uri=sqlite:///{tmp_path / 'm.db'}",
        ]
        for location, endpoint, _ in cases
    ]
    for (_, _, message), out in zip(cases, run_cli_cases_reporting_ray(tmp_path, argvs)):
        assert out.returncode == 2 and not out.ray_imported, out.stderr
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
    assert cli_main(data_uri) == 2  # read where it is, and found missing there
    assert f"annotation file {uri}/train.json does not exist" in capsys.readouterr().err
    assert not any(p.name.startswith("s3") for p in tmp_path.rglob("*"))
