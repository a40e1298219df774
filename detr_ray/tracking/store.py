"""Where runs are tracked: the MLflow tracking URI, resolved and checked. No MLflow import.

Default store: ``sqlite:///<storage_path>/mlflow.db`` with artifacts under
``<storage_path>/mlartifacts``; on a cluster, ``tracking.uri`` (or MLflow's
``MLFLOW_TRACKING_URI``) names an ``http://`` server.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from detr_ray.errors import ConfigError

if TYPE_CHECKING:
    from detr_ray.config import ExperimentConfig

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
PROBE_TIMEOUT_S = 5.0


def resolve_tracking_uri(configured: str | None, storage_path: str | os.PathLike) -> str:
    """Where runs are tracked: ``configured`` (``tracking.uri``, ``--tracking-uri``),
    else MLflow's own ``MLFLOW_TRACKING_URI``, else the default sqlite file in
    ``storage_path``.

    The one place the tracking URI is resolved: before Ray starts, for a run
    (:func:`detr_ray.train.prepare.resolve_paths` pins it into the config, so
    workers on other nodes need not share the driver's environment), and for
    the commands that read a store (``dashboard``, ``predict --model``).

    Raises:
        ConfigError: nothing is configured and ``storage_path`` is object
            storage, where a sqlite file cannot live.
    """
    uri = find_tracking_uri(configured, storage_path)
    if uri is None:
        raise ConfigError(
            f"run.storage_path {storage_path} is object storage, where MLflow's default "
            "sqlite file cannot live: set tracking.uri to an http:// MLflow server (its "
            "artifacts can go to the same store) or to sqlite:////ABSOLUTE/LOCAL/PATH/mlflow.db"
        )
    return uri


def find_tracking_uri(configured: str | None, storage_path: str | os.PathLike) -> str | None:
    """:func:`resolve_tracking_uri`, or ``None`` where it would raise."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if "://" in str(storage_path):
        return None
    return f"sqlite:///{Path(storage_path).expanduser().resolve() / 'mlflow.db'}"


def tracking_uri_of(config: ExperimentConfig) -> str:
    """The tracking URI of a prepared run (:func:`resolve_tracking_uri` pinned it
    into ``tracking.uri`` before Ray started), or the error of
    :func:`resolve_tracking_uri` if none could be."""
    return config.tracking.uri or resolve_tracking_uri(None, config.run.storage_path)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: ``mlartifacts`` beside a sqlite
    file (``run.storage_path/mlartifacts`` for the default store), else the
    server's choice."""
    if not uri.startswith("sqlite:///"):
        return None
    return str(Path(uri[len("sqlite:///") :]).parent / "mlartifacts")


def require_existing_store(uri: str, what: str) -> None:
    """A ``sqlite:///`` store must exist already (MLflow would create an empty one)
    for ``what`` (a command that reads it)."""
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///") :])
        if not database.is_file():
            raise ConfigError(
                f"no MLflow store at {database} for {what}: train first (detr-ray train ...), "
                "or pass --tracking-uri / --storage-path"
            )


def check_tracking(uri: str | None) -> None:
    """A supported tracking URI; an ``http(s)`` server must answer ``/health``."""
    if uri is None:
        return  # the default sqlite store in run.storage_path
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme == "file" or scheme == "":
        raise ConfigError(
            f"tracking.uri {uri!r}: MLflow 3's file store is off by default and cannot hold "
            "detr-ray's metric names; use sqlite:///PATH/mlflow.db or an http:// server "
            "(or leave tracking.uri null for a sqlite store in run.storage_path)"
        )
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"tracking.uri {uri!r} has the unsupported scheme {scheme!r}; use sqlite:///PATH, "
            "http(s)://HOST:PORT or a database URI (postgresql://...)"
        )
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as e:
            raise ConfigError(
                f"tracking.uri {uri} answered {e.code} on /health: is it an MLflow server?"
            ) from None
        except (TimeoutError, urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(
                f"the MLflow server tracking.uri {uri} does not answer ({reason}); start it, "
                "forward its port, or set tracking.uri (MLFLOW_TRACKING_URI) to a server that runs"
            ) from None
