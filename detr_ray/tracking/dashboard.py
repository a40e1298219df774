"""``detr-ray dashboard``: the MLflow UI for a tracking store, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from detr_ray.errors import ConfigError
from detr_ray.tracking.store import check_tracking, require_existing_store, resolve_tracking_uri

READY_TIMEOUT_S = 60


def start_dashboard(uri: str | None, storage_path: str, port: int) -> subprocess.Popen:
    """Start ``mlflow server`` on 127.0.0.1:``port`` for the store and wait until it answers.

    ``uri`` None means the store ``detr-ray train`` would log to
    (:func:`~detr_ray.tracking.store.resolve_tracking_uri`).
    """
    uri = resolve_tracking_uri(uri, storage_path)
    if uri.startswith(("http://", "https://")):
        raise ConfigError(f"{uri} is an MLflow server already: open it in a browser")
    check_tracking(uri)  # a scheme MLflow's server can open
    require_existing_store(uri, "the dashboard")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        uri,
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ConfigError(
                f"mlflow server exited with code {server.returncode} (port {port} in use? "
                "pick another with --port)"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise ConfigError(f"mlflow server did not answer on {url} within {READY_TIMEOUT_S} s")


def run_dashboard(uri: str | None, storage_path: str, port: int) -> int:
    server = start_dashboard(uri, storage_path, port)
    print(
        f"MLflow UI for {resolve_tracking_uri(uri, storage_path)}:\n  http://127.0.0.1:{port}\n"
        "(listening on loopback only; on a remote machine use SSH port forwarding: "
        f"ssh -L {port}:127.0.0.1:{port} HOST). Ctrl-C stops it.",
        flush=True,
    )
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait(timeout=10)
        return 0
