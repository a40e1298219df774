"""Talking to a Ray cluster's Jobs API: connect, submit, follow, list, stop.

The address is resolved and probed by :mod:`detr_ray.cluster.address` (the same rules
as ``train`` and ``tune``).

Token authentication (Ray 2.60): when ``RAY_AUTH_MODE`` is unset and a token is
at hand (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, or
``~/.ray/auth_token``), it is sent; a rejected or missing token gets an error
that says which token was used and what to set.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from detr_ray.cluster.address import ADDRESS_VARIABLES, probe, resolve_address
from detr_ray.errors import ClusterError
from detr_ray.jobs.spec import JobSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


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
        refresh_ray_auth_mode()


def refresh_ray_auth_mode() -> None:
    """Make an already imported Ray re-read ``RAY_AUTH_MODE`` from the environment.

    Ray reads its config (the auth mode among it) once, when ``ray._raylet`` is
    first imported; a process that imported Ray before we set the variable (a
    test session, a notebook) would keep sending no token. Ray 2.60 has no
    public way to re-read it, so this is the one place detr-ray uses a private
    Ray API (``ray._raylet.Config.initialize``); ``tests/test_jobs.py`` fails
    loudly if a Ray upgrade removes or renames it.
    """
    if "ray._raylet" in sys.modules:
        from ray._raylet import Config

        Config.initialize("")


@contextmanager
def _only_address(address: str | None):
    """Ray's client lets the environment override its ``address``: hide it meanwhile."""
    saved = {v: os.environ.pop(v) for v in ADDRESS_VARIABLES if v in os.environ and address}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(flag: str | None = None):
    """A ``JobSubmissionClient`` for the resolved address, or a :class:`ClusterError`."""
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
        raise ClusterError(_auth_message(address or source, e)) from None
    except ConnectionError as e:
        where = f"the Ray cluster at {address}" if address else "a Ray cluster on this machine"
        raise ClusterError(
            f"cannot reach {where}: {e} Start one with `ray get-auth-token --generate` and "
            "`RAY_AUTH_MODE=token ray start --head --dashboard-host 127.0.0.1`, or pass "
            "--address (or set RAY_API_SERVER_ADDRESS)."
        ) from None
    except (RuntimeError, OSError, ValueError) as e:  # e.g. a server that is not Ray's
        raise ClusterError(
            f"{address or source} does not answer as a Ray Jobs API ({e}); the Jobs API "
            "address looks like http://HOST:8265"
        ) from None


def _auth_message(where: str, error: Exception) -> str:
    token = token_source()
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode != "token":
        fix = (
            f"RAY_AUTH_MODE is {mode!r}, so no token was sent: unset it (a token file "
            "is then used when there is one) or set it to 'token'"
        )
    elif token is None:
        fix = (
            "no token was found: set RAY_AUTH_TOKEN_PATH to the cluster's token file (or "
            "RAY_AUTH_TOKEN to the token), or copy it to ~/.ray/auth_token; on the head "
            "node `ray get-auth-token` prints it"
        )
    else:
        fix = (
            f"the token from {token} was rejected: it must be the one the cluster was "
            "started with (`ray get-auth-token` on the head node prints it)"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"the Ray cluster at {where} requires token authentication ({first_line}); {fix}"


def retry_id(client, spec: JobSpec) -> tuple[str, str] | None:
    """For a spec whose ``submission_id`` the cluster already knows: ``(a free id
    for the retry, the earlier job's status)``; ``None`` if the id is free.

    The cluster keeps every id, so a job spec with an id could run only once;
    a retry runs as ``ID-2``, ``ID-3``... with the same entrypoint, so the same
    ``run.name``: the training resumes from its latest checkpoint.

    Raises:
        ClusterError: the earlier job has not ended (stop it first).
    """
    wanted = spec.submission_id
    if not wanted:
        return None
    known = {job.submission_id: str(job.status.value) for job in client.list_jobs()}
    if wanted not in known:
        return None
    if known[wanted] not in TERMINAL:
        raise ClusterError(
            f"{spec.source}: job {wanted} is still {known[wanted]} on {client.get_address()}; "
            f"stop it first (detr-ray jobs stop {wanted}) or follow it "
            f"(detr-ray jobs logs {wanted} --follow)"
        )
    number = 2
    while f"{wanted}-{number}" in known:
        number += 1
    return f"{wanted}-{number}", known[wanted]


def submit(client, spec: JobSpec) -> str:
    """Submit ``spec``; returns the submission id."""
    from ray.exceptions import AuthenticationError

    try:
        return client.submit_job(**spec.submit_kwargs())
    except AuthenticationError as e:
        raise ClusterError(_auth_message(client.get_address(), e)) from None
    except RuntimeError as e:
        raise ClusterError(f"{spec.source}: the cluster refused the job: {e}") from None


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
        raise ClusterError(str(e)) from None


def wait(client, job_id: str, poll_s: float = 1.0, timeout_s: float | None = None) -> str:
    """Poll until the job reaches a terminal status; returns it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            status = str(client.get_job_status(job_id).value)
        except OSError as e:  # requests' ConnectionError: the cluster or the tunnel went away
            raise ClusterError(
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
        rows.append(
            {
                "id": job.submission_id or job.job_id,
                "status": str(job.status.value),
                "started_ms": job.start_time or 0,
                "start": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000))
                if job.start_time
                else "-",
                "entrypoint": job.entrypoint,
                "message": job.message or "",
            }
        )
    return sorted(rows, key=lambda row: row["started_ms"], reverse=True)
