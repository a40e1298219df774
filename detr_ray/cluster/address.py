"""Which Ray cluster a command talks to, and a fast check that it answers.

``train``, ``tune`` and the Jobs commands all take ``--address``. The address
comes from that flag, else ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``,
else the Ray cluster running on this machine. An address that does not answer
fails within :data:`CONNECT_TIMEOUT_S` seconds (Ray's client would wait for
the operating system's TCP timeout, minutes). No Ray import here.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from detr_ray.errors import ClusterError

CONNECT_TIMEOUT_S = 5.0
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
LOCAL_WORDS = ("auto", "local")  # Ray's words for the cluster on this machine


def is_local(address: str | None) -> bool:
    """``address`` means a Ray on this machine (none given, ``auto``, ``local``)."""
    return address is None or address in LOCAL_WORDS


def resolve_address(flag: str | None) -> tuple[str | None, str]:
    """``(address or None for the local cluster, where it came from)``.

    An address is ``http(s)://HOST:PORT`` (the Jobs API, port 8265 by default)
    or, as everywhere in Ray, a cluster address ``HOST:PORT`` (the GCS, 6379);
    ``auto`` and ``local`` mean the cluster on this machine.
    """
    candidates = [(flag, "--address")] + [(os.environ.get(v), v) for v in ADDRESS_VARIABLES]
    for value, source in candidates:
        if value:
            return (None if is_local(value) else value), source
    return None, "the local Ray cluster"


def probe(address: str, source: str) -> None:
    """Fail fast, naming ``address`` and ``source``, if nothing accepts a TCP connection there.

    Also used before ``ray.init(address=...)`` (a GCS ``host:port``), which
    would otherwise retry for a long time.
    """
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ray") or not parts.hostname:
        raise ClusterError(
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
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} (from {source}): {e}. Is the cluster "
            "up, and the port forwarded? For a cluster from cluster.yaml run "
            "`ray dashboard cluster.yaml` (keeps http://127.0.0.1:8265 open); for a local "
            "head, `ray start --head` prints its address."
        ) from None
