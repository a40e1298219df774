"""The cluster tier's shared Ray head: ``ray start --head --block`` in its own
process group, dashboard on 127.0.0.1, its own temp folder and ports, a random
token; stopped by its handle when the session ends. Commands run as a user
would run them: ``detr-ray`` or ``ray`` in a subprocess, from the repository
root."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Head:
    """A running head: ``address`` its Jobs API, ``gcs`` its cluster address."""

    def __init__(self, root: Path, address: str, gcs: str, token: Path):
        self.root, self.address, self.gcs, self.token = root, address, gcs, token

    def env(self, **extra: str) -> dict:
        """A user's shell: the venv on PATH, a home without a Ray token, no Ray address."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(
                ("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER", "MLFLOW_TRACKING_URI")
            )
        }
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            HOME=str(self.root / "home"),
            # its own Ray temp folder: the head's record of itself is no other test's
            RAY_TMPDIR=str(self.root),
            RAY_USAGE_STATS_ENABLED="0",
            MLFLOW_DISABLE_TELEMETRY="true",
        )
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 240, **extra_env: str):
        return subprocess.run(
            list(args),
            cwd=ROOT,
            env=self.env(**extra_env),
            text=True,
            capture_output=True,
            timeout=timeout,
        )

    def detr(self, *args: str, **kwargs):
        """``detr-ray ARGS`` with the cluster's token file at hand (RAY_AUTH_MODE unset)."""
        kwargs.setdefault("RAY_AUTH_TOKEN_PATH", str(self.token))
        return self.run(str(BIN / "detr-ray"), *args, **kwargs)


@pytest.fixture(scope="session")
def head():
    """One Ray head for the tier's tests that join a running cluster (2 CPUs,
    token authentication on, its own ports and temp folder)."""
    root = Path(tempfile.mkdtemp(prefix="drh-", dir="/tmp"))  # short: Ray's socket paths
    (root / "home").mkdir()
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    # Every port of the head its own, so a developer's running head does not clash.
    dashboard, gcs, client, agent_http, agent_grpc, runtime_env, metrics = free_ports(7)
    h = Head(root, f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", token)
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--temp-dir={root / 'ray'}",
    ]
    # A throwaway head need not drain for Ray's default 30 s when the module ends.
    env = h.env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3",
    )
    log = open(root / "head.log", "w")
    process = subprocess.Popen(
        command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{h.address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError as e:  # it answers, and wants the token
                assert e.code == 401, e
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the Ray head did not start:\n" + (root / "head.log").read_text()
                    ) from None
                time.sleep(0.5)
        yield h
    finally:
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
