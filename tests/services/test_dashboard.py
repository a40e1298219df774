import json
import socket
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from detr_ray.errors import ConfigError
from detr_ray.tracking.dashboard import start_dashboard
from detr_ray.tracking.runs import RunTracker
from detr_ray.tracking.store import resolve_tracking_uri

from tests.support.ports import free_port


def test_dashboard_serves_the_default_store_on_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    storage = tmp_path / "runs"
    storage.mkdir()
    tracker = RunTracker(
        resolve_tracking_uri(None, storage),
        "detr-ray",
        "demo",
        storage / "demo",
        params={"train.epochs": 2},
    )
    tracker.log_metrics(1, {"loss": 3.5, "d0.loss_cls": 1.25})
    port = free_port()
    server = start_dashboard(None, str(storage), port)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={tracker.run_id}"
        with urllib.request.urlopen(url, timeout=10) as response:
            run = json.load(response)["run"]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert metrics == {"loss": 3.5, "d0.loss_cls": 1.25}
        # Loopback only: bound to 127.0.0.1, the server is not reachable at another
        # address of this machine. 127.0.0.2 is loopback too (the whole 127/8 is),
        # so it always exists, and a server bound to 0.0.0.0 would answer there.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=3).close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert MlflowClient(resolve_tracking_uri(None, storage)).get_run(tracker.run_id)


def test_dashboard_without_a_store_says_what_to_do(tmp_path):
    with pytest.raises(
        ConfigError, match="no MLflow store at .*mlflow.db for the dashboard: train first"
    ):
        start_dashboard(None, str(tmp_path / "nothing"), free_port())
