"""Where runs live: a local (or shared) folder, or object storage, through one small API.

A *location* is a string: an absolute local path, or a URI of an object store
(``s3://bucket/prefix``, ``gs://bucket/prefix``). Object stores are reached
with pyarrow's file systems, which Ray Train and Tune take too, so that the
run folder, checkpoints, sweeps and detr-ray's own files share one storage.

An S3-compatible endpoint (MinIO, Ceph, moto) and its region come from, in
order: the URI's own query (``s3://b/p?endpoint_override=http://host:9000&
region=us-east-1``, pyarrow's syntax), the config (``run.storage_endpoint``,
``run.storage_region``), then the environment (``AWS_ENDPOINT_URL``,
``AWS_REGION`` / ``AWS_DEFAULT_REGION``; pyarrow alone ignores the endpoint
variable, and without a region asks AWS for the bucket's, which fails
offline). Credentials are never in the config: pyarrow reads the usual AWS
variables and files. No Ray, no MLflow here.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")
TIMEOUT_S = 10.0  # connecting and each request: an unreachable endpoint fails in seconds


@dataclass(frozen=True)
class StorageOptions:
    """Endpoint and region of an S3-compatible store (``None``: see the module docstring)."""

    endpoint: str | None = None
    region: str | None = None


DEFAULT_OPTIONS = StorageOptions()  # the URI's query, then the environment


def is_uri(location: str | os.PathLike | None) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``), False for a local path."""
    return location is not None and urlsplit(str(location)).scheme in OBJECT_STORE_SCHEMES


def without_query(location: str) -> str:
    """The location without a URI's ``?endpoint_override=...`` query (for messages, tags)."""
    return str(location).split("?", 1)[0] if is_uri(location) else str(location)


def join(location: str, *parts: str) -> str:
    """``location/part/...``, keeping a URI's query at the end."""
    if not is_uri(location):
        return str(Path(location, *parts))
    base, _, query = str(location).partition("?")
    joined = posixpath.join(base.rstrip("/"), *parts)
    return f"{joined}?{query}" if query else joined


def open_location(location: str, options: StorageOptions = DEFAULT_OPTIONS):
    """``(pyarrow FileSystem, path within it)`` for ``location``."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    parts = urlsplit(str(location))
    query = dict(parse_qsl(parts.query))
    path = f"{parts.netloc}{parts.path}".rstrip("/")
    if parts.scheme in ("gs", "gcs"):
        filesystem, _ = pafs.FileSystem.from_uri(f"gs://{path}?{urlencode(query)}")
        return filesystem, path
    endpoint = (
        query.get("endpoint_override") or options.endpoint or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        query.get("region")
        or options.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    kwargs: dict = {
        "region": region,
        "connect_timeout": TIMEOUT_S,
        "request_timeout": TIMEOUT_S,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2),
    }
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kwargs.update(endpoint_override=host or endpoint, scheme=scheme or "https")
    return pafs.S3FileSystem(**kwargs), path


def read_bytes(location: str, options: StorageOptions = DEFAULT_OPTIONS) -> bytes:
    filesystem, path = open_location(location, options)
    # A random-access file reads in one request of its known size; a stream's
    # readall() reads in small chunks (160 MB took a minute against moto).
    with filesystem.open_input_file(path) as file:
        return file.read()


def write_bytes(location: str, data: bytes, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    filesystem, path = open_location(location, options)
    parent = posixpath.dirname(path) if is_uri(location) else str(Path(path).parent)
    filesystem.create_dir(parent, recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def kind(location: str, options: StorageOptions = DEFAULT_OPTIONS) -> str:
    """``"file"``, ``"folder"`` or ``"missing"``."""
    import pyarrow.fs as pafs

    filesystem, path = open_location(location, options)
    found = filesystem.get_file_info(path).type
    if found == pafs.FileType.File:
        return "file"
    return "folder" if found == pafs.FileType.Directory else "missing"


def list_folder(location: str, options: StorageOptions = DEFAULT_OPTIONS) -> list[str]:
    """The names directly inside ``location`` (sorted; empty if it does not exist)."""
    import pyarrow.fs as pafs

    filesystem, path = open_location(location, options)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(posixpath.basename(info.path) for info in filesystem.get_file_info(selector))


def delete(location: str, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    """Remove the file at ``location`` if it is there."""
    filesystem, path = open_location(location, options)
    if kind(location, options) == "file":
        filesystem.delete_file(path)
