"""Real servers on loopback, started and stopped by the test (or benchmark) that uses them.

- :func:`mlflow_server`: ``mlflow server`` over a sqlite store, in its own
  process group (it has worker processes), killed by that group's id.
- :func:`s3_server`: moto's S3 API in this process, stopped by its handle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
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


def s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    """The keys of the objects under ``prefix`` in ``bucket`` (not pyarrow's folder markers)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = (o["Key"] for page in pages for o in page.get("Contents", []))
    return sorted(k for k in keys if not k.endswith("/"))
