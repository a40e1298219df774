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
from urllib.parse import urlsplit

from detr_ray.errors import ConfigError

DRIVER_TAG = "detr_ray.driver"  # host:pid of the `detr-ray train` driving a run now

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
PROBE_TIMEOUT_S = 5.0


def tracking_uri(configured: str | None, storage_path: str | os.PathLike) -> str:
    """``configured``, or the default sqlite file in ``storage_path`` (a local folder)."""
    if configured:
        return configured
    if "://" in str(storage_path):
        raise ConfigError(
            f"run.storage_path {storage_path} is not a local folder, so the default sqlite "
            "tracking store cannot live there: set tracking.uri"
        )
    return f"sqlite:///{Path(storage_path).expanduser().resolve() / 'mlflow.db'}"


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
