"""What a registered model version holds, read back through MLflow."""

from __future__ import annotations

import hashlib
import tempfile

from mlflow.tracking import MlflowClient

from detr_ray.tracking.names import VERSION_CHECKPOINT_TAG
from detr_ray.tracking.registry import download_registered_checkpoint


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def registered_checkpoints(tracking_uri: str, name: str) -> dict[str, tuple[str, str]]:
    """``{version: (digest of the checkpoint file the version carries, the
    location its tag names)}`` for every version of registered model ``name``."""
    found = {}
    for version in MlflowClient(tracking_uri).search_model_versions(f"name = '{name}'"):
        with tempfile.TemporaryDirectory() as tmp:
            carried = download_registered_checkpoint(
                f"models:/{name}/{version.version}", tracking_uri, tmp
            ).read_bytes()
        found[str(version.version)] = (digest(carried), version.tags[VERSION_CHECKPOINT_TAG])
    return found
