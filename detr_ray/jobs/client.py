"""Talking to a Ray cluster's Jobs API: connect, submit, follow, list, stop.

The address comes from ``--address``, else ``RAY_API_SERVER_ADDRESS``, else
``RAY_ADDRESS``, else the Ray cluster running on this machine. An address that
does not answer fails within :data:`CONNECT_TIMEOUT_S` seconds (Ray's client
would wait for the operating system's TCP timeout, minutes).

Token authentication (Ray 2.60): when ``RAY_AUTH_MODE`` is unset and a token is
at hand (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or
``~/.ray/auth_token``), it is sent; a rejected or missing token gets an error
that says which token was used and what to set.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from detr_ray.jobs.spec import JobSpec

CONNECT_TIMEOUT_S = 5.0
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobsError(RuntimeError):
    """The cluster could not be reached or refused a request; the message says why."""


def resolve_address(flag: str | None) -> tuple[str | None, str]:
    """``(address or None for the local cluster, where it came from)``.

    An address is ``http(s)://HOST:PORT`` (the Jobs API, port 8265 by default)
    or, as everywhere in Ray, a cluster address ``HOST:PORT`` (the GCS, 6379);
    ``auto`` and ``local`` mean the cluster on this machine.
    """
    for value, source in ((flag, "--address"),
                          *((os.environ.get(v), v) for v in ADDRESS_VARIABLES)):  # fmt: skip
        if value:
            return (None if value in ("auto", "local") else value), source
    return None, "the local Ray cluster"


def token_source() -> str | None:
    """Where Ray will read the authentication token from, if there is one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def _use_token_if_available() -> None:
    """Turn on token mode for this process when a token exists and the mode is unset."""
    if os.environ.get("RAY_AUTH_MODE") is None and token_source() is not None:
        os.environ["RAY_AUTH_MODE"] = "token"
        if "ray._raylet" in sys.modules:  # Ray caches its config: refresh it
            from ray._raylet import Config

            Config.initialize("")


def probe(address: str, source: str) -> None:
    """Fail fast, naming ``address`` and ``source``, if nothing accepts a TCP connection there.

    Also used before ``ray.init(address=...)`` (a GCS ``host:port``), which
    would otherwise retry for a long time.
    """
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ray") or not parts.hostname:
        raise JobsError(
            f"{source} {address!r} is not a Ray address; expected e.g. http://127.0.0.1:8265 "
            "(the dashboard / Jobs API port)"
        )
    import requests

    if requests.utils.get_environ_proxies(url):  # a proxy decides; let Ray's client try
        return
    port = parts.port or {"http": 80, "https": 443, "ray": 10001}[parts.scheme]
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise JobsError(
            f"cannot reach the Ray cluster at {address} (from {source}): {e}. Is the cluster "
            "up, and the port forwarded? For a cluster from cluster.yaml run "
            "`ray dashboard cluster.yaml` (keeps http://127.0.0.1:8265 open); for a local "
            "head, `ray start --head` prints its address."
        ) from None


def check_cluster_address(address: str | None) -> None:
    """Before ``ray.init(address=...)``: a concrete address that does not answer fails now."""
    if address not in (None, "auto", "local"):
        probe(address, "--address")


@contextmanager
def _only_address(address: str | None):
    """Ray's client lets the environment override its ``address``: hide it meanwhile."""
    saved = {v: os.environ.pop(v) for v in ADDRESS_VARIABLES if v in os.environ and address}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(flag: str | None = None):
    """A ``JobSubmissionClient`` for the resolved address, or a :class:`JobsError`."""
    address, source = resolve_address(flag)
    if address is not None:
        probe(address, source)
    _use_token_if_available()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        with _only_address(address):
            return JobSubmissionClient(address)
    except AuthenticationError as e:
        raise JobsError(_auth_message(address or source, e)) from None
    except ConnectionError as e:
        where = f"the Ray cluster at {address}" if address else "a Ray cluster on this machine"
        raise JobsError(
            f"cannot reach {where}: {e} Start one with `ray get-auth-token --generate` and "
            "`RAY_AUTH_MODE=token ray start --head --dashboard-host 127.0.0.1`, or pass "
            "--address (or set RAY_API_SERVER_ADDRESS)."
        ) from None
    except (RuntimeError, OSError, ValueError) as e:  # e.g. a server that is not Ray's
        raise JobsError(
            f"{address or source} does not answer as a Ray Jobs API ({e}); the Jobs API "
            "address looks like http://HOST:8265"
        ) from None


def _auth_message(where: str, error: Exception) -> str:
    token = token_source()
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode != "token":
        fix = (f"RAY_AUTH_MODE is {mode!r}, so no token was sent: unset it (a token file "
               "is then used when there is one) or set it to 'token'")  # fmt: skip
    elif token is None:
        fix = ("no token was found: set RAY_AUTH_TOKEN_PATH to the cluster's token file (or "
               "RAY_AUTH_TOKEN to the token), or copy it to ~/.ray/auth_token; on the head "
               "node `ray get-auth-token` prints it")  # fmt: skip
    else:
        fix = (f"the token from {token} was rejected: it must be the one the cluster was "
               "started with (`ray get-auth-token` on the head node prints it)")  # fmt: skip
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"the Ray cluster at {where} requires token authentication ({first_line}); {fix}"


def submit(client, spec: JobSpec) -> str:
    """Submit ``spec``; returns the submission id."""
    from ray.exceptions import AuthenticationError

    try:
        return client.submit_job(**spec.submit_kwargs())
    except AuthenticationError as e:
        raise JobsError(_auth_message(client.get_address(), e)) from None
    except RuntimeError as e:
        raise JobsError(f"{spec.source}: the cluster refused the job: {e}") from None


def follow(client, job_id: str, out=sys.stdout) -> str:
    """Stream the job's logs to ``out`` until it ends; returns its final status.

    A job that did not succeed also gets Ray's status message (e.g. a
    runtime_env that failed to build, before the job printed anything).
    """
    import aiohttp

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except (RuntimeError, aiohttp.ClientError, OSError) as e:
        _known_job(client, job_id)  # an unknown id: say so; else the stream broke: poll
        if not isinstance(e, RuntimeError):
            out.write(f"[detr-ray] log stream interrupted ({type(e).__name__}); waiting\n")
    status = wait(client, job_id)
    if status != "SUCCEEDED":
        message = client.get_job_info(job_id).message
        if message:
            out.write(f"[detr-ray] {job_id}: {message.strip().splitlines()[0]}\n")
    return status


def _known_job(client, job_id: str) -> None:
    try:
        client.get_job_status(job_id)
    except RuntimeError as e:
        raise JobsError(str(e)) from None


def wait(client, job_id: str, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Poll until the job reaches a terminal status; returns it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            status = str(client.get_job_status(job_id).value)
        except OSError as e:  # requests' ConnectionError: the cluster or the tunnel went away
            raise JobsError(
                f"lost the connection to {client.get_address()} ({type(e).__name__}); the "
                f"job keeps running there: detr-ray jobs status {job_id}"
            ) from None
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def status_exit_code(status: str) -> int:
    """The exit code of ``--follow``: 0 succeeded, 1 failed, 3 stopped."""
    return {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}.get(status, 4)


def job_table(client) -> list[dict]:
    """Every job the cluster knows, newest first: id, status, start time, entrypoint."""
    rows = []
    for job in client.list_jobs():
        rows.append({
            "id": job.submission_id or job.job_id,
            "status": str(job.status.value),
            "started_ms": job.start_time or 0,
            "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
            if job.start_time else "-",
            "entrypoint": job.entrypoint,
            "message": job.message or "",
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["started_ms"], reverse=True)
