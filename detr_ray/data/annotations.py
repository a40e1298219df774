"""COCO annotation files: read, validate, complete, and clean their boxes.

Pure (json, numpy-free math, pycocotools): used by the dataset, by
``detr-ray data check`` and by the checks that run before Ray starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from detr_ray.errors import DataError

# Why a box is not a training target (the keys of DatasetReport.invalid_boxes).
NOT_NUMBERS = "not numbers"
NOT_FINITE = "NaN or inf"
EMPTY = "width or height <= 0"
OUTSIDE = "outside the image"


def load_coco_json(ann_file: str | os.PathLike) -> dict:
    """Read and validate a COCO detection annotation file.

    Raises :class:`DataError` for a missing file, invalid JSON, a missing
    section or key, duplicate ids, or an annotation that refers to an image or
    category the file does not define. Fields COCO's evaluation needs but
    many exporters leave out are filled in: ``area`` (the box's area) and
    ``iscrowd`` (0); ``data["filled_fields"]`` counts them.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"annotation file {path} is not valid JSON: {e.msg} (line {e.lineno}, column "
            f"{e.colno}); is it truncated or damaged?"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(f"annotation file {path} is not UTF-8 text: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"annotation file {path}: the top level must be an object, not a list")
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section), list):
            raise DataError(f"annotation file {path}: missing the '{section}' list")
    if not data["categories"]:
        raise DataError(f"annotation file {path}: 'categories' is empty")
    _check_entries(path, "categories", data["categories"], ("id", "name"))
    _check_entries(path, "images", data["images"], ("id", "file_name", "width", "height"))
    _check_entries(
        path, "annotations", data["annotations"], ("id", "image_id", "category_id", "bbox")
    )
    for img in data["images"]:
        width, height = img["width"], img["height"]
        if not (_positive_whole(width) and _positive_whole(height)):
            raise DataError(
                f"annotation file {path}: image id {img['id']} ({img['file_name']!r}) has size "
                f"{width!r}x{height!r}; width and height must be positive integers"
            )
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    filled = {"area": 0, "iscrowd": 0}
    for ann in data["annotations"]:
        where = f"annotation file {path}: annotation id {ann['id']}"
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


def _check_entries(path: Path, section: str, entries: list, keys: tuple[str, ...]) -> None:
    seen: set = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"annotation file {path}: '{section}'[{index}] is not an object")
        for key in keys:
            if key not in entry:
                raise DataError(f"annotation file {path}: '{section}'[{index}] has no '{key}'")
        if entry["id"] in seen:
            raise DataError(f"annotation file {path}: duplicate id {entry['id']} in '{section}'")
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
