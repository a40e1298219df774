"""A run's best checkpoint as a registered MLflow model, served the MLflow way.

With ``tracking.register_model: NAME`` the best checkpoint of a run (or of a
sweep, ``detr-ray tune --register-model NAME``) is logged as an MLflow pyfunc
model: the weights-only checkpoint as its artifact, :class:`DetrModel` (this
package's own pre- and post-processing) as its code. Each registration is a
new version of ``NAME`` tagged with its validation AP, and the alias
``champion`` moves to the version with the best AP. Then::

    mlflow models serve -m models:/NAME@champion --env-manager local -h 127.0.0.1 -p 5001
    detr-ray predict --model models:/NAME@champion IMAGES --out DIR

answer with the same detections. The model takes a column ``image`` of
encoded image bytes (PNG, JPEG...; base64 text through the REST API) and
returns one row per detection: ``image_index``, ``label``, ``category_id``,
``name``, ``score``, ``x1 y1 x2 y2`` (pixels of the input image); the
``threshold`` parameter is the minimum score (0.5).
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from detr_ray import storage
from detr_ray.checkpoint import CHECKPOINT_FILE, resolve_checkpoint_path
from detr_ray.errors import CheckpointError, ConfigError, DataError
from detr_ray.storage import StorageOptions
from detr_ray.tracking.names import CHAMPION_ALIAS, VERSION_AP_TAG, VERSION_CHECKPOINT_TAG

REQUIREMENTS = (
    "torch",
    "numpy",
    "scipy",
    "pillow",
    "pycocotools",
    "pyyaml",
    "pyarrow",
    "pandas",
    "mlflow",
)
DEFAULT_THRESHOLD = 0.5
OUTPUT_COLUMNS = (
    ("image_index", "long"),
    ("label", "long"),
    ("category_id", "long"),
    ("name", "string"),
    ("score", "double"),
    ("x1", "double"),
    ("y1", "double"),
    ("x2", "double"),
    ("y2", "double"),
)
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema([ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS]),
    params=ParamSchema([ParamSpec("threshold", "double", DEFAULT_THRESHOLD)]),
)


class DetrModel(mlflow.pyfunc.PythonModel):
    """detr-ray's inference behind MLflow's pyfunc interface (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from detr_ray.checkpoint import load_model
        from detr_ray.evaluation.detect import resolve_device

        self.loaded = load_model(context.artifacts["checkpoint"], device=resolve_device(None))

    # A DataFrame hint: MLflow infers no schema from it (the signature is the schema).
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from detr_ray.data.images import decode_rgb
        from detr_ray.evaluation.detect import detections_of

        threshold = float((params or {}).get("threshold", DEFAULT_THRESHOLD))
        rows = []
        for index, value in enumerate(model_input["image"]):
            image = decode_rgb(_image_bytes(value))
            for det in detections_of(self.loaded, image, threshold):
                x1, y1, x2, y2 = det["box_xyxy"]
                rows.append(
                    {
                        "image_index": index,
                        "label": det["label"],
                        "category_id": det["category_id"],
                        "name": det["name"],
                        "score": det["score"],
                        "x1": x1,
                        "y1": y1,
                        "x2": x2,
                        "y2": y2,
                    }
                )
        return pd.DataFrame(rows, columns=[name for name, _ in OUTPUT_COLUMNS])


def register_checkpoint(
    tracking_uri: str,
    run_id: str,
    checkpoint: str,
    name: str,
    val_ap: float,
    options: StorageOptions = storage.DEFAULT_OPTIONS,
) -> str:
    """Log ``checkpoint`` (a location, local or in object storage) as a pyfunc
    model of run ``run_id``, register it as a new version of ``name`` and move
    ``champion`` to it if its ``val_ap`` is the best. Returns the version."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / CHECKPOINT_FILE
        local.write_bytes(storage.read_bytes(resolve_checkpoint_path(checkpoint, options), options))
        # The model belongs to the run; reopening a closed run (a sweep's best
        # trial) must not change how it ended.
        status = client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("served_model.py")),
                artifacts={"checkpoint": str(local)},
                signature=SIGNATURE,
                # Logging runs the example through the model: a registered model works.
                input_example=_example_input(),
                code_paths=[str(Path(__file__).parents[1])],  # the model carries the whole package
                pip_requirements=_requirements(),
                registered_model_name=name,
            )
    client.update_run(run_id, status=status)  # the fluent run's end changed it
    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, VERSION_AP_TAG, f"{val_ap:.6f}")
    client.set_model_version_tag(
        name, version, VERSION_CHECKPOINT_TAG, storage.without_query(checkpoint)
    )
    try:
        current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        best = float(current.tags.get(VERSION_AP_TAG, "-1"))
    except mlflow.exceptions.MlflowException:
        best = -1.0  # no champion yet
    if val_ap > best:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    return version


def download_registered_checkpoint(model_uri: str, tracking_uri: str, out_dir: str) -> Path:
    """The checkpoint file of a registered model (``models:/NAME@champion``,
    ``models:/NAME/3``) downloaded into ``out_dir``."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=out_dir)
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(
            f"--model {model_uri}: {str(e).splitlines()[0]} (tracking store {tracking_uri})"
        ) from None
    found = sorted(Path(folder).rglob(CHECKPOINT_FILE))
    if not found:
        raise CheckpointError(f"registered model {model_uri} holds no {CHECKPOINT_FILE}")
    return found[0]


def _example_input() -> Any:
    """A one-row input: a 64 x 64 grey PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [buffer.getvalue()]})


def _requirements() -> list[str]:
    """What the served model imports, pinned to this environment's versions
    (given, so that MLflow does not load the model to guess them)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def _image_bytes(value: Any) -> bytes:
    """An input cell: bytes, or base64 text (the REST API's encoding of binary)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise DataError("an 'image' cell is neither bytes nor base64 text") from None
