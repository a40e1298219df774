"""Real servers on loopback, started and stopped by the test (or benchmark) that uses them.

- :func:`mlflow_server`: ``mlflow server`` over a sqlite store, in its own
  process group (it has worker processes), killed by that group's id.
- :func:`s3_server`: moto's S3 API in this process, stopped by its handle.
- :func:`served_model`: ``mlflow models serve`` of a registered model, in its
  own process group, stopped by that group's id; :func:`invoke` asks it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port

S3_REGION = "us-east-1"


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` over ``folder/server.db``, artifacts
    proxied into ``folder/artifacts``; returns once it answers ``/health``."""
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'server.db'}"]
    command += ["--artifacts-destination", str(folder / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / f"server-{time.monotonic_ns()}.log").open("w")
    server = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    stop_mlflow_server(server)
    raise RuntimeError("mlflow server did not start within 120 s")


def stop_mlflow_server(server: subprocess.Popen) -> None:
    """SIGKILL the server's process group (the one this code started, by its id)."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A running MLflow server for the ``with`` block; yields its ``http://`` URI."""
    port = free_port()
    server = start_mlflow_server(folder, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow_server(server)


@contextlib.contextmanager
def s3_server(*buckets: str) -> Iterator[str]:
    """moto's S3 API on 127.0.0.1 holding ``buckets``; yields its endpoint URL.

    Dummy credentials are set in the environment if none are (Ray workers
    started after this inherit them)."""
    import boto3
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION)
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


DATA_KEYS = ("train_ann", "train_images", "val_ann", "val_images")


def upload_dataset(dataset, uri: str, endpoint: str) -> dict[str, str]:
    """Every file of a generated dataset (a ``SyntheticDataset``) copied under
    ``uri`` (``s3://bucket/prefix``); returns its ``data`` section's four
    locations there."""
    from detr_ray import storage

    options = storage.StorageOptions(endpoint, S3_REGION)
    root = Path(dataset.train_ann).parents[1]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        storage.write_bytes(
            f"{uri}/{path.relative_to(root).as_posix()}", path.read_bytes(), options
        )
    return {
        key: f"{uri}/{Path(getattr(dataset, key)).relative_to(root).as_posix()}"
        for key in DATA_KEYS
    }


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    """The keys of the objects under ``prefix`` in ``bucket`` (not pyarrow's folder markers)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = (o["Key"] for page in pages for o in page.get("Contents", []))
    return sorted(k for k in keys if not k.endswith("/"))


@contextlib.contextmanager
def served_model(model_uri: str, tracking_uri: str, log: Path) -> Iterator[str]:
    """``mlflow models serve -m MODEL_URI`` (``--env-manager local``) on a free
    loopback port for the ``with`` block; yields its ``http://`` address once it
    answers ``/ping``. mlflow starts uvicorn found on PATH: the venv's bin first."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    command = [f"{bin_dir}/mlflow", "models", "serve", "-m", model_uri]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as out:
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own process group, ours to stop
        try:
            address = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    raise AssertionError(f"mlflow models serve exited with {server.returncode}")
                try:
                    with urllib.request.urlopen(f"{address}/ping", timeout=2):
                        break
                except (urllib.error.URLError, ConnectionError):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no answer from {address} in 180 s") from None
                    time.sleep(0.5)
            yield address
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def invoke(address: str, image: Path, threshold: float) -> list[dict]:
    """The served detr-ray model's rows for one image, in ``predict``'s shape."""
    payload = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(image.read_bytes()).decode()]],
        },
        "params": {"threshold": threshold},
    }
    request = urllib.request.Request(
        f"{address}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        rows = json.loads(response.read())["predictions"]
    assert {r["image_index"] for r in rows} <= {0}
    return [
        {
            "label": r["label"],
            "category_id": r["category_id"],
            "name": r["name"],
            "score": r["score"],
            "box_xyxy": [r["x1"], r["y1"], r["x2"], r["y2"]],
        }
        for r in rows
    ]
