"""Tracking against a real MLflow server on loopback that goes down mid-run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from detr_ray.tracking.runs import RunTracker

from tests.support.ports import free_port
from tests.support.servers import start_mlflow_server, stop_mlflow_server


def test_a_server_down_for_a_while_delays_no_step_and_loses_no_point(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    try:
        tracker = RunTracker(uri, "outage", "run", tmp_path / "run")
        for step in range(5):
            tracker.log_metrics(step, {"loss": 10.0 - step, "lr": 1e-4})
        tracker.flush(60)

        stop_mlflow_server(server)
        started = time.monotonic()
        for step in range(5, 15):
            tracker.log_metrics(step, {"loss": 10.0 - step, "lr": 1e-4})
        assert time.monotonic() - started < 2.0  # no step waited for the dead server

        server = start_mlflow_server(tmp_path, port)  # back, same store, same address
        tracker.flush(300)
        assert tracker.dropped_points == 0
        tracker.finish()
        client = MlflowClient(uri)
        history = sorted(
            (m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")
        )
        assert history == [(step, 10.0 - step) for step in range(15)]
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        stop_mlflow_server(server)


def test_runs_of_dead_drivers_on_this_host_are_closed_and_no_others(tmp_path):
    from detr_ray.tracking.lifecycle import close_abandoned_runs
    from detr_ray.tracking.names import DRIVER_TAG, PARENT_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(finished.stdout)  # a process that has ended
    drivers = {
        "dead": f"here:{dead_pid}",
        "alive": f"here:{os.getpid()}",
        "elsewhere": f"there:{dead_pid}",  # another host's driver cannot be checked
        "untagged": None,
        "trial": f"here:{dead_pid}",  # a sweep's trial: its sweep closes it
    }
    ids = {}
    for name, driver in drivers.items():
        tracker = RunTracker(uri, "exp", name, tmp_path / name, asynchronous=False)
        if driver:
            tracker.set_tags({DRIVER_TAG: driver})
        if name == "trial":
            tracker.set_tags({PARENT_TAG: ids["dead"]})
        ids[name] = tracker.run_id
    assert close_abandoned_runs(uri, "exp", "here") == ["dead"]
    client = MlflowClient(uri)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "elsewhere": "RUNNING",
        "untagged": "RUNNING",
        "trial": "RUNNING",
    }
    assert close_abandoned_runs(uri, "exp", "here") == []  # nothing twice


def test_the_loss_plot_is_redrawn_at_most_every_refresh_interval_and_when_forced(tmp_path):
    from detr_ray.criterion.loss_keys import keys_by_term
    from detr_ray.tracking.names import LOSS_PLOT_ARTIFACT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    series = keys_by_term(2)
    points = {key: 1.0 for keys in series.values() for key in keys}
    client = MlflowClient(uri)

    def plots(tracker: RunTracker) -> list[str]:
        return [a.path for a in client.list_artifacts(tracker.run_id, "plots")]

    tracker = RunTracker(
        uri, "exp", "run", tmp_path / "run", asynchronous=False, loss_series=series
    )
    tracker.log_metrics(1, points)
    assert not tracker.log_loss_plot()  # a report seconds into the run: not drawn
    assert plots(tracker) == []
    assert tracker.log_loss_plot(force=True)  # the run's end
    assert plots(tracker) == [LOSS_PLOT_ARTIFACT]
    assert not tracker.log_loss_plot()  # just drawn

    every_time = RunTracker(
        uri, "exp", "eager", tmp_path / "eager", asynchronous=False, loss_series=series,
        plot_refresh_s=0.0,
    )  # fmt: skip
    every_time.log_metrics(1, points)
    assert every_time.log_loss_plot() and every_time.log_loss_plot()
    assert plots(every_time) == [LOSS_PLOT_ARTIFACT]
