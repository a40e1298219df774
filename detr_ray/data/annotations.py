"""COCO annotation files: read, validate, complete, and clean their boxes.

Pure (json, numpy-free math, pycocotools): used by the dataset, by
``detr-ray data check`` and by the checks that run before Ray starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from detr_ray import storage
from detr_ray.errors import DataError
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions

# Why a box is not a training target (the keys of DatasetReport.invalid_boxes).
NOT_NUMBERS = "not numbers"
NOT_FINITE = "NaN or inf"
EMPTY = "width or height <= 0"
OUTSIDE = "outside the image"


def load_coco_json(ann_file: str | os.PathLike, options: StorageOptions = DEFAULT_OPTIONS) -> dict:
    """Read and validate a COCO detection annotation file.

    Raises :class:`DataError` for a missing file, invalid JSON, a missing
    section or key, duplicate ids, or an annotation that refers to an image or
    category the file does not define. Fields COCO's evaluation needs but
    many exporters leave out are filled in: ``area`` (the box's area) and
    ``iscrowd`` (0); ``data["filled_fields"]`` counts them. ``data["digest"]``
    is the file's content digest (16 hex digits of its SHA-256).

    ``ann_file`` may be an object-store URI (``s3://...``; ``options``: its
    endpoint and region): it is read in one request.
    """
    name, raw = _read_annotation_file(ann_file, options)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(
            f"annotation file {name} is not valid JSON: {e.msg} (line {e.lineno}, column "
            f"{e.colno}); is it truncated or damaged?"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"annotation file {name} is not UTF-8 text: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {name}: the top level must be an object, not a list")
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section), list):
            raise DataError(f"annotation file {name}: missing the '{section}' list")
    if not data["categories"]:
        raise DataError(f"annotation file {name}: 'categories' is empty")
    _check_entries(name, "categories", data["categories"], ("id", "name"))
    _check_entries(name, "images", data["images"], ("id", "file_name", "width", "height"))
    _check_entries(
        name, "annotations", data["annotations"], ("id", "image_id", "category_id", "bbox")
    )
    for img in data["images"]:
        width, height = img["width"], img["height"]
        if not (_positive_whole(width) and _positive_whole(height)):
            raise DataError(
                f"annotation file {name}: image id {img['id']} ({img['file_name']!r}) has size "
                f"{width!r}x{height!r}; width and height must be positive integers"
            )
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    filled = {"area": 0, "iscrowd": 0}
    for ann in data["annotations"]:
        where = f"annotation file {name}: annotation id {ann['id']}"
        if ann["image_id"] not in image_ids:
            raise DataError(
                f"{where} refers to image_id {ann['image_id']}, which is not in 'images'"
            )
        if ann["category_id"] not in category_ids:
            raise DataError(
                f"{where} refers to category_id {ann['category_id']}, which is not in 'categories'"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise DataError(f"{where}: 'bbox' must be a list [x, y, width, height], got {bbox!r}")
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            filled["iscrowd"] += 1
        if "area" not in ann:
            ann["area"] = _box_area(bbox)
            filled["area"] += 1
    data["filled_fields"] = filled
    data["digest"] = hashlib.sha256(raw).hexdigest()[:16]
    return data


def clean_box(bbox: Any, width: int, height: int) -> tuple[list[float] | None, str | None]:
    """A COCO ``[x, y, w, h]`` box as a training target: ``(xyxy clipped to the
    image, None)``, or ``(None, why)`` when it cannot be one (see the reason
    constants above)."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None, NOT_NUMBERS
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, NOT_FINITE
    if w <= 0 or h <= 0:
        return None, EMPTY
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None, OUTSIDE
    return [x1, y1, x2, y2], None


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools ``COCO`` over an in-memory dataset, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_entries(name: str, section: str, entries: list, keys: tuple[str, ...]) -> None:
    seen: set = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"annotation file {name}: '{section}'[{index}] is not an object")
        for key in keys:
            if key not in entry:
                raise DataError(f"annotation file {name}: '{section}'[{index}] has no '{key}'")
        if entry["id"] in seen:
            raise DataError(f"annotation file {name}: duplicate id {entry['id']} in '{section}'")
        seen.add(entry["id"])


def _positive_whole(value: Any) -> bool:
    """640 or 640.0, not 0, -1, 640.5, "640" or True."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0 and float(value).is_integer()


def _box_area(bbox: list) -> float:
    try:
        area = float(bbox[2]) * float(bbox[3])
    except (TypeError, ValueError):
        return 0.0
    return area if math.isfinite(area) and area > 0 else 0.0


def _read_annotation_file(
    ann_file: str | os.PathLike, options: StorageOptions
) -> tuple[str, bytes]:
    """``(name for messages, bytes)`` of a local file or an object (one request)."""
    if not storage.is_uri(ann_file):
        path = Path(ann_file)
        if not path.is_file():
            raise DataError(f"annotation file {path} does not exist")
        return str(path), path.read_bytes()
    name = storage.without_query(str(ann_file))
    try:
        return name, storage.read_bytes(str(ann_file), options)
    except FileNotFoundError:
        raise DataError(
            f"annotation file {name} does not exist (no such object, or no such bucket)"
        ) from None
    except OSError as e:
        raise DataError(
            f"annotation file {name} cannot be read: {e} (check the endpoint, region and "
            "credentials: run.storage_endpoint, run.storage_region, AWS_* variables)"
        ) from None
