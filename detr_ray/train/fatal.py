"""Errors a restart cannot fix: recorded in the run folder so that Ray's retry ends at once.

Ray Train restarts the worker group after any worker error (up to
``run.max_failures``). A user-facing error (:class:`DetrRayError`: a corrupt
image the checks before Ray could not see, a bad checkpoint) would only come
back, after minutes of retraining from the last checkpoint. The worker that
meets one writes it here before it fails; the next attempt reads it and ends
at once, and the driver raises it with its own kind. The driver removes the
record when a new run of the same folder starts (the user fixed the cause).
The run folder may be local or in object storage (:mod:`detr_ray.storage`).
"""

from __future__ import annotations

import json

from detr_ray import storage
from detr_ray.errors import DetrRayError, error_kind
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions

FATAL_ERROR_FILE = ".detr_ray_error.json"


def write_fatal_error(
    run_dir: str, error: DetrRayError, options: StorageOptions = DEFAULT_OPTIONS
) -> None:
    record = {"kind": type(error).__name__, "message": str(error)}
    storage.write_bytes(
        storage.join(run_dir, FATAL_ERROR_FILE), json.dumps(record).encode(), options
    )


def read_fatal_error(
    run_dir: str, options: StorageOptions = DEFAULT_OPTIONS
) -> DetrRayError | None:
    """The error an earlier attempt of this run recorded, if any."""
    location = storage.join(run_dir, FATAL_ERROR_FILE)
    if storage.kind(location, options) != "file":
        return None
    record = json.loads(storage.read_bytes(location, options))
    return error_kind(record["kind"])(record["message"])


def clear_fatal_error(run_dir: str, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    storage.delete(storage.join(run_dir, FATAL_ERROR_FILE), options)
