"""Real faults for tests and benchmarks: a Ray cluster of several nodes on this
machine, a ``detr-ray train`` driver in its own process group, and what the
workers recorded.

Every process a test kills is one it started (a node of its ``Cluster``, the
driver it launched, a worker whose pid the run recorded), ended by its own
pid or process group. The drivers' workers record every step through
:class:`~detr_ray.train.hooks.FaultHooks` (``record_images``), handed to the
driver in its environment (:data:`~detr_ray.train.hooks.HOOKS_ENV`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from detr_ray.train.hooks import HOOKS_ENV, FaultHooks

# The head notices a SIGKILLed node within about 2 s (instead of ~30 s), and
# Ray Train gives up on a worker group that cannot start after 2 s.
HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
TRAIN_ENV = {
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "2",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


@contextlib.contextmanager
def cluster_on_this_machine(worker_nodes: int):
    """A head without CPUs (so workers land on the worker nodes) and
    ``worker_nodes`` 1-CPU nodes: yields ``(cluster, nodes)``; shut down (and
    this process's environment restored) on exit."""
    from ray.cluster_utils import Cluster

    # A Ray temp folder of its own (short: Ray's socket paths): the cluster's
    # record of itself, which its placement-group cleaner reads to find its
    # State API, is no other Ray's on this machine.
    private = {**TRAIN_ENV, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rc-", dir="/tmp")}
    # every node's workers may read a test's S3 API on loopback (moto: dummy credentials)
    private |= {
        key: os.environ.get(key, "testing")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    saved = {key: os.environ.get(key) for key in private}
    os.environ.update(private)
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH_CHECKS}
    )
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(worker_nodes)]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Drivers started and not yet ended: a test that fails half-way leaves its driver
# (and the cluster's CPUs it holds) to :func:`end_running_drivers`.
_RUNNING: list[Driver] = []


def end_running_drivers() -> list[str]:
    """SIGKILL the process group of every driver still running (each started
    here, killed by its own id); returns their logs' names."""
    ended = []
    while _RUNNING:
        driver = _RUNNING.pop()
        if driver.process.poll() is None:
            driver.kill()
            driver.process.wait(30)
            ended.append(driver.log.name)
    return ended


class Driver:
    """``detr-ray train CONFIG --address ADDRESS ...`` in its own process group,
    its output in ``log``, its workers running ``hooks``."""

    def __init__(
        self, config: Path, address: str, log: Path, *args: str, hooks: FaultHooks | None = None
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(TRAIN_ENV)
        if hooks is not None:
            env[HOOKS_ENV] = json.dumps(hooks.to_dict())
        self.log, self.started = log, time.time()
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "detr_ray.cli", "train", str(config), "--address", address]
            + list(args),
            cwd=config.parent,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one, by its id
        )
        _RUNNING.append(self)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._out.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the driver's process group (if it still runs)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def records(folder: Path) -> list[dict]:
    """Every step record the workers wrote (``FaultHooks.record_images``), in time order."""
    rows = []
    for file in sorted(folder.glob("*.jsonl")):
        for line in file.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill
                    pass
    return sorted(rows, key=lambda r: r["time"])


def wait_until(check: Callable[[], object], timeout: float, what: str, driver: Driver):
    """Poll ``check`` until it returns something truthy; fail with the driver's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if driver.process.poll() is not None:
            raise AssertionError(f"driver ended before {what}:\n{driver.output()[-4000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{driver.output()[-4000:]}")


def attempts(rows: list[dict]) -> list[dict]:
    """The run's attempts (worker-group starts) in time order: start step, world size."""
    first: dict[str, dict] = {}
    for row in rows:
        seen = first.get(row["attempt"])
        if seen is None or row["time"] < seen["time"]:
            first[row["attempt"]] = row
    ordered = sorted(first.values(), key=lambda r: r["time"])
    return [
        {"attempt": r["attempt"], "start": int(r["attempt"].split("-")[0]), "world": r["world"]}
        for r in ordered
    ]


def trained_images_by_epoch(rows: list[dict]) -> dict[int, list[int]]:
    """The images that went into the final model, per epoch: each step as the
    last attempt that trained it did it (a later attempt resumed from a
    checkpoint at or after it, so an earlier attempt's version was lost)."""
    order = {a["attempt"]: i for i, a in enumerate(attempts(rows))}
    last: dict[int, int] = {}
    for row in rows:
        last[row["step"]] = max(last.get(row["step"], -1), order[row["attempt"]])
    images: dict[int, list[int]] = {}
    for row in rows:
        if order[row["attempt"]] == last[row["step"]]:
            images.setdefault(row["epoch"], []).extend(row["images"])
    return images
