"""Errors a restart cannot fix: recorded in the run folder so that Ray's retry ends at once.

Ray Train restarts the worker group after any worker error (up to
``run.max_failures``). A user-facing error (:class:`DetrRayError`: a corrupt
image the checks before Ray could not see, a bad checkpoint) would only come
back, after minutes of retraining from the last checkpoint. The worker that
meets one writes it here before it fails; the next attempt reads it and ends
at once, and the driver raises it with its own kind. The driver removes the
record when a new run of the same folder starts (the user fixed the cause).
"""

from __future__ import annotations

import json
from pathlib import Path

from detr_ray.errors import DetrRayError, error_kind

FATAL_ERROR_FILE = ".detr_ray_error.json"


def write_fatal_error(run_dir: Path, error: DetrRayError) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"kind": type(error).__name__, "message": str(error)}
    (run_dir / FATAL_ERROR_FILE).write_text(json.dumps(record))


def read_fatal_error(run_dir: Path) -> DetrRayError | None:
    """The error an earlier attempt of this run recorded, if any."""
    path = run_dir / FATAL_ERROR_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return error_kind(record["kind"])(record["message"])


def clear_fatal_error(run_dir: Path) -> None:
    (run_dir / FATAL_ERROR_FILE).unlink(missing_ok=True)
