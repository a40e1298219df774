"""A detection dataset over a COCO annotation file and an image folder.

What it guarantees:

- the annotation file is validated up front; a malformed one raises
  :class:`DataError` naming the file and what is wrong;
- category ids map to contiguous labels through a :class:`LabelMap`;
- ``iscrowd`` annotations are left out of training targets (they stay in the
  ``COCO`` object, so evaluation still sees them);
- ``[x, y, w, h]`` boxes become ``xyxy`` clipped to the image; invalid ones
  (``w`` or ``h`` <= 0, non-finite, or outside the image) are dropped and
  counted, and the counts are reported once per dataset;
- images without annotations are kept (empty targets) unless ``filter_empty``;
- a missing or unreadable image raises :class:`DataError` naming the file and
  image id, or with ``on_bad_image="skip"`` is left out and counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from detr_ray.data.labels import LabelMap
from detr_ray.errors import DataError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets (crowd and invalid boxes removed)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes_xyxy: np.ndarray  # (G, 4) float32, absolute pixels, clipped to the image
    labels: np.ndarray  # (G,) int64 contiguous labels


def load_coco_json(ann_file: str | os.PathLike) -> dict:
    """Read and validate a COCO detection annotation file.

    Raises :class:`DataError` for a missing file, invalid JSON, a missing
    section or key, duplicate ids, or an annotation that refers to an image or
    category the file does not define.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"annotation file {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
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
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
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
    return data


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


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools ``COCO`` over an in-memory dataset, without its prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Images and training targets from a COCO annotation file.

    ``dataset[i]`` is ``transforms(image, target)``, where ``image`` is an RGB
    ``PIL.Image`` and ``target`` holds ``image_id`` (int), ``boxes_xyxy``
    ``(G, 4)`` float32 absolute pixels, ``labels`` ``(G,)`` int64 and
    ``orig_size`` ``(h, w)``. Without transforms that pair is returned as is.
    With ``on_bad_image="skip"`` an unreadable image yields ``None`` (the
    collate step drops it).

    Args:
        ann_file: COCO-format JSON.
        image_dir: folder the images' ``file_name`` are relative to.
        transforms: callable ``(image, target) -> (image, target)``.
        label_map: the category-id -> label map to use (e.g. a checkpoint's);
            by default the file's categories sorted by id.
        filter_empty: leave out images without any training box.
        on_bad_image: ``"error"`` or ``"skip"`` for missing/unreadable images.
        max_images: keep only the first this many images (e.g. a quick validation).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms=None,
        label_map: LabelMap | None = None,
        filter_empty: bool = False,
        on_bad_image: str = "error",
        max_images: int | None = None,
    ):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}"
            )
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.on_bad_image = on_bad_image
        if not self.image_dir.is_dir():
            raise DataError(f"image folder {self.image_dir} (for {self.ann_file}) does not exist")
        data = load_coco_json(self.ann_file)
        self.coco = coco_from_dict(data)
        self.label_map = label_map or LabelMap.from_categories(data["categories"])
        self.stats: Counter = Counter()
        records = self._build_records(data)
        if filter_empty:
            kept = [r for r in records if len(r.labels)]
            self.stats["empty images filtered"] = len(records) - len(kept)
            records = kept
        if max_images is not None:
            records = records[:max_images]
        self.records = self._drop_missing_images(records)
        self._report()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = self._load_image(record)
        if image is None:
            return None
        target = {
            "image_id": record.image_id,
            "boxes_xyxy": torch.from_numpy(record.boxes_xyxy.copy()),
            "labels": torch.from_numpy(record.labels.copy()),
            "orig_size": (image.height, image.width),
        }
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    # ------------------------------------------------------------------ building
    def _build_records(self, data: dict) -> list[ImageRecord]:
        for cat in data["categories"]:
            try:
                self.label_map.label_of(cat["id"])
            except KeyError:
                if self.coco.getAnnIds(catIds=[cat["id"]]):
                    raise DataError(
                        f"{self.ann_file}: category {cat['id']} ({cat['name']!r}) has annotations "
                        f"but is not in the model's label map {self.label_map.names}"
                    ) from None
        records = []
        for img in data["images"]:
            width, height = int(img["width"]), int(img["height"])
            if width <= 0 or height <= 0:
                raise DataError(
                    f"{self.ann_file}: image id {img['id']} ({img['file_name']}) has size "
                    f"{width}x{height}; width and height must be positive"
                )
            boxes, labels = [], []
            for ann in self.coco.imgToAnns.get(img["id"], []):
                if ann.get("iscrowd", 0):
                    self.stats["crowd boxes left out of training"] += 1
                    continue
                box = self._valid_box(ann["bbox"], width, height)
                if box is None:
                    continue
                boxes.append(box)
                labels.append(self.label_map.label_of(ann["category_id"]))
            records.append(
                ImageRecord(
                    image_id=img["id"],
                    file_name=img["file_name"],
                    width=width,
                    height=height,
                    boxes_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    labels=np.asarray(labels, dtype=np.int64),
                )
            )
        return records

    def _valid_box(self, bbox, width: int, height: int) -> list[float] | None:
        """``[x, y, w, h]`` -> clipped xyxy, or None (counted) if invalid."""
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            self.stats["invalid boxes dropped (not numbers)"] += 1
            return None
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            self.stats["invalid boxes dropped (NaN or inf)"] += 1
            return None
        if w <= 0 or h <= 0:
            self.stats["invalid boxes dropped (width or height <= 0)"] += 1
            return None
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            self.stats["invalid boxes dropped (outside the image)"] += 1
            return None
        return [x1, y1, x2, y2]

    def _drop_missing_images(self, records: list[ImageRecord]) -> list[ImageRecord]:
        missing = [r for r in records if not (self.image_dir / r.file_name).is_file()]
        if not missing:
            return records
        first = missing[0]
        if self.on_bad_image == "error":
            raise DataError(
                f"{len(missing)} of {len(records)} images listed in {self.ann_file} are missing "
                f"from {self.image_dir}, e.g. {first.file_name!r} (image id {first.image_id}). "
                "Check the image folder, or set on_bad_image: skip to train without them."
            )
        self.stats["missing images skipped"] = len(missing)
        missing_ids = {r.image_id for r in missing}
        return [r for r in records if r.image_id not in missing_ids]

    def _report(self) -> None:
        if self.stats:
            details = ", ".join(f"{n} {what}" for what, n in sorted(self.stats.items()))
            log.warning("%s: %s", self.ann_file, details)

    # ------------------------------------------------------------------ loading
    def _load_image(self, record: ImageRecord) -> Image.Image | None:
        path = self.image_dir / record.file_name
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            problem = f"cannot read image {path} (image id {record.image_id}): {e}"
        else:
            if (image.width, image.height) == (record.width, record.height):
                return image
            # Boxes are in the annotation's coordinates; a differently sized file
            # (re-saved, EXIF-rotated) would silently misplace every box.
            problem = (
                f"image {path} (image id {record.image_id}) is {image.width}x{image.height} "
                f"but {self.ann_file.name} says {record.width}x{record.height}"
            )
        if self.on_bad_image == "skip":
            log.warning("%s; skipped", problem)
            return None
        raise DataError(f"{problem}. Fix or replace it, or set on_bad_image: skip.")
