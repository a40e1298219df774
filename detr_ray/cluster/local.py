"""The Ray cluster a command joins when none is named, found and probed before joining.

``ray.init()`` without an address joins ``RAY_ADDRESS``, else the cluster
recorded in Ray's temp folder (``$RAY_TMPDIR/ray/ray_current_cluster``; Ray
writes it for every cluster it starts on this machine), else starts a new
one. A record left by a Ray that died (killed by the out-of-memory killer, a
test interrupted hard) makes ``ray.init()`` retry the dead address for ever.
:func:`choose_cluster` settles the choice first, with a probe that answers
within seconds: a live cluster is joined, a stale record is warned about
and a new local Ray started, an address that was asked for and does not
answer is an error. No Ray import here.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from detr_ray.cluster.address import LOCAL_WORDS, is_local, probe

RECORD_FILE = "ray_current_cluster"
PROBE_TIMEOUT_S = 3.0


def ray_temp_dir() -> Path:
    """Ray's temp folder on this machine, as Ray finds it: ``$RAY_TMPDIR/ray``, else
    ``$TMPDIR/ray`` on Linux, else ``/tmp/ray``."""
    if os.environ.get("RAY_TMPDIR"):
        root = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        root = os.environ["TMPDIR"]
    else:
        root = "/tmp"
    return Path(root) / "ray"


def recorded_cluster() -> tuple[str, Path] | None:
    """``(address, record file)`` of the cluster Ray last started here, if recorded."""
    record = ray_temp_dir() / RECORD_FILE
    try:
        address = record.read_text().strip()
    except OSError:
        return None
    return (address, record) if address else None


def answers(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` (a GCS) within ``timeout_s``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class ClusterChoice:
    """What a command will run on: ``address`` to join, or ``None`` to start a new
    local Ray; ``line`` says which in one sentence; ``stale`` warns of a dead record."""

    address: str | None
    line: str
    stale: str | None = None

    @property
    def starts_here(self) -> bool:
        return self.address is None


def choose_cluster(address: str | None) -> ClusterChoice:
    """The cluster a command with ``--address address`` (``None``: not given) runs on.

    Raises:
        ClusterError: ``--address`` or ``RAY_ADDRESS`` names a cluster that
            does not answer.
    """
    if not is_local(address):
        probe(str(address), "--address")
        return ClusterChoice(str(address), f"joining the Ray cluster at {address} (--address)")
    variable = os.environ.get("RAY_ADDRESS", "")
    if variable and variable not in LOCAL_WORDS:
        probe(variable, "RAY_ADDRESS")
        return ClusterChoice(variable, f"joining the Ray cluster at {variable} (RAY_ADDRESS)")
    found = recorded_cluster()
    if found is None:
        return ClusterChoice(None, "starting a local Ray on this machine")
    recorded, record = found
    if answers(recorded):
        return ClusterChoice(
            recorded, f"joining the Ray cluster running on this machine at {recorded} ({record})"
        )
    stale = (
        f"{record} names a Ray cluster at {recorded} that does not answer (a Ray that "
        "died without cleaning up); starting a new local Ray instead. `ray stop --force` "
        "clears the record."
    )
    return ClusterChoice(None, "starting a local Ray on this machine", stale=stale)
