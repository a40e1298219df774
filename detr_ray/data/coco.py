"""A detection dataset over a COCO annotation file and an image folder.

What it guarantees:

- the annotation file is validated up front (:func:`load_coco_json`); a
  malformed one raises :class:`DataError` naming the file and what is wrong;
- category ids map to contiguous labels through a :class:`LabelMap`;
- ``iscrowd`` annotations are left out of training targets;
- ``[x, y, w, h]`` boxes become ``xyxy`` clipped to the image; invalid ones
  (``w`` or ``h`` <= 0, non-finite, or outside the image) are dropped and
  counted, and the counts are reported once per dataset;
- :attr:`CocoDetection.coco`, what evaluation scores against, holds exactly
  what the model is trained and run on: the kept images, the cleaned (clipped)
  boxes, the invalid ones dropped, crowd boxes as COCO's ignore regions;
- images without annotations are kept (empty targets) unless ``filter_empty``;
- a missing or unreadable image raises :class:`DataError` naming the file and
  image id, or with ``on_bad_image="skip"`` is left out and counted;
- the annotation file and the image folder may be in object storage
  (``s3://``, ``gs://``): the prefix is listed once, and a batch's images are
  read at once on a bounded thread pool (:mod:`detr_ray.data.image_folder`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import torch
from PIL import Image

from detr_ray.data.annotations import coco_from_dict, load_coco_json
from detr_ray.data.ground_truth import clean_ground_truth
from detr_ray.data.image_folder import open_image_folder
from detr_ray.data.images import ImageReadError, decode_rgb
from detr_ray.data.labels import LabelMap
from detr_ray.data.node_cache import NodeCache
from detr_ray.errors import DataError
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions
from detr_ray.storage import without_query as storage_name

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
TRAINING_HINT = "set data.on_bad_image: skip"  # how to go on without bad images


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets (crowd and invalid boxes removed)."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes_xyxy: np.ndarray  # (G, 4) float32, absolute pixels, clipped to the image
    labels: np.ndarray  # (G,) int64 contiguous labels


class CocoDetection(torch.utils.data.Dataset):
    """Images and training targets from a COCO annotation file.

    ``dataset[i]`` is ``transforms(image, target)``, where ``image`` is an RGB
    ``PIL.Image`` and ``target`` holds ``image_id`` (int), ``boxes_xyxy``
    ``(G, 4)`` float32 absolute pixels, ``labels`` ``(G,)`` int64 and
    ``orig_size`` ``(h, w)``. Without transforms that pair is returned as is.
    With ``on_bad_image="skip"`` an unreadable image yields ``None`` (the
    collate step drops it).

    Args:
        ann_file: COCO-format JSON (a path or an object-store URI).
        image_dir: folder (or bucket prefix) the images' ``file_name`` are
            relative to.
        transforms: callable ``(image, target) -> (image, target)``.
        label_map: the category-id -> label map to use (e.g. a checkpoint's);
            by default the file's categories sorted by id.
        filter_empty: leave out images without any training box.
        on_bad_image: ``"error"`` or ``"skip"`` for missing/unreadable images.
        max_images: keep only the first this many images (e.g. a quick validation).
        bad_image_hint: how a user of this command goes on without bad images
            (e.g. eval's ``pass --on-bad-image skip``), for error messages.
        storage: endpoint and region of an object store (URIs only).
        cache: a node-local copy of the images read from an object store.
        read_threads: images of one batch read at once (``__getitems__``).
        annotations: the file's contents as :func:`load_coco_json` returned
            them, when the caller has read it already (e.g. the driver).
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
        bad_image_hint: str = TRAINING_HINT,
        storage: StorageOptions = DEFAULT_OPTIONS,
        cache: NodeCache | None = None,
        read_threads: int = 1,
        annotations: dict | None = None,
    ):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(
                f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}"
            )
        self.ann_file = storage_name(str(ann_file))  # for messages
        self.folder = open_image_folder(image_dir, storage, cache)
        self.image_dir = storage_name(str(image_dir))  # for messages
        self.transforms = transforms
        self.on_bad_image = on_bad_image
        self.bad_image_hint = bad_image_hint
        self.read_threads = read_threads
        if not self.folder.exists():
            raise DataError(
                f"image folder {self.image_dir} (for {self.ann_file}) does not exist or is not "
                "a folder"
            )
        data = annotations if annotations is not None else load_coco_json(ann_file, storage)
        self.digest: str = data["digest"]  # of the annotation file's content
        self.label_map = label_map or LabelMap.from_categories(data["categories"])
        self.stats: Counter = Counter()
        for field, count in data["filled_fields"].items():
            if count:
                self.stats[f"annotations without '{field}' (filled in)"] = count
        records, ground_truth = self._build_records(data)
        if filter_empty:
            kept = [r for r in records if len(r.labels)]
            self.stats["empty images filtered"] = len(records) - len(kept)
            records = kept
        if max_images is not None:
            records = records[:max_images]
        self.records = self._drop_missing_images(records)
        kept_ids = {r.image_id for r in self.records}
        self.coco = coco_from_dict(
            {
                "images": [img for img in data["images"] if img["id"] in kept_ids],
                "annotations": [a for a in ground_truth if a["image_id"] in kept_ids],
                "categories": data["categories"],
            }
        )
        self._report()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        return self._item(record, self.folder.read_many([record.file_name], 1)[0])

    def __getitems__(self, indices: list[int]) -> list:
        """``[self[i] for i in indices]``, their images read at once (torch's
        DataLoader fetches a batch through this)."""
        records = [self.records[i] for i in indices]
        read = self.folder.read_many([r.file_name for r in records], self.read_threads)
        return [self._item(r, data) for r, data in zip(records, read)]

    def _item(self, record: ImageRecord, data: bytes | OSError):
        image = self._load_image(record, data)
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

    def original_image(self, index: int) -> Image.Image:
        """The image of ``records[index]`` as RGB, as read (no transforms; for drawing)."""
        return decode_rgb(self.folder.read(self.records[index].file_name))

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    @property
    def ground_truth_note(self) -> str:
        """What evaluation scores against, in a sentence (for the evaluation output)."""
        dropped = sum(n for what, n in self.stats.items() if what.startswith("invalid boxes"))
        skipped = self.stats.get("missing images skipped", 0)
        return (
            f"scored against the {len(self.records)} images and the boxes the model is trained "
            f"and run on ({self.clipped_boxes} boxes clipped to their image, {dropped} invalid "
            f"boxes dropped, {skipped} missing images left out; crowd boxes are ignore regions)"
        )

    # ------------------------------------------------------------------ building
    def _build_records(self, data: dict) -> tuple[list[ImageRecord], list[dict]]:
        """Training records and the cleaned ground truth (COCO annotations)."""
        for cat in data["categories"]:
            try:
                self.label_map.label_of(cat["id"])
            except KeyError:
                if any(a["category_id"] == cat["id"] for a in data["annotations"]):
                    raise DataError(
                        f"{self.ann_file}: category {cat['id']} ({cat['name']!r}) has annotations "
                        f"but is not in the model's label map {self.label_map.names}"
                    ) from None
        cleaned = clean_ground_truth(data)
        if cleaned.crowd:
            self.stats["crowd boxes left out of training"] = cleaned.crowd
        for reason, count in cleaned.dropped.items():
            self.stats[f"invalid boxes dropped ({reason})"] = count
        self.clipped_boxes = cleaned.clipped
        records = []
        for img in data["images"]:
            targets = cleaned.targets[img["id"]]
            records.append(
                ImageRecord(
                    image_id=img["id"],
                    file_name=img["file_name"],
                    width=int(img["width"]),
                    height=int(img["height"]),
                    boxes_xyxy=np.asarray([b for b, _ in targets], dtype=np.float32).reshape(-1, 4),
                    labels=np.asarray(
                        [self.label_map.label_of(c) for _, c in targets], dtype=np.int64
                    ),
                )
            )
        return records, cleaned.annotations

    def _drop_missing_images(self, records: list[ImageRecord]) -> list[ImageRecord]:
        missing = set(self.folder.missing(r.file_name for r in records))
        if not missing:
            return records
        first = next(r for r in records if r.file_name in missing)
        if self.on_bad_image == "error":
            raise DataError(
                f"{len(missing)} of {len(records)} images listed in {self.ann_file} are missing "
                f"from {self.image_dir}, e.g. {first.file_name!r} (image id {first.image_id}). "
                f"Check the image folder, or {self.bad_image_hint} to go on without them."
            )
        self.stats["missing images skipped"] = len(missing)
        return [r for r in records if r.file_name not in missing]

    def _report(self) -> None:
        if self.stats:
            details = ", ".join(f"{n} {what}" for what, n in sorted(self.stats.items()))
            log.warning("%s: %s", self.ann_file, details)

    # ------------------------------------------------------------------ loading
    def _load_image(self, record: ImageRecord, data: bytes | OSError) -> Image.Image | None:
        """``data`` (an image's bytes, or why they could not be read) as RGB; None: skip it."""
        path = self.folder.where(record.file_name)
        try:
            if isinstance(data, OSError):
                raise data
            image = decode_rgb(data)
        except (OSError, ImageReadError) as e:
            problem = f"cannot read image {path} (image id {record.image_id}): {e}"
        else:
            if (image.width, image.height) == (record.width, record.height):
                return image
            # Boxes are in the annotation's coordinates; a differently sized file
            # (re-saved, EXIF-rotated) would silently misplace every box.
            problem = (
                f"image {path} (image id {record.image_id}) is {image.width}x{image.height} "
                f"but {PurePosixPath(self.ann_file).name} says {record.width}x{record.height}"
            )
        if self.on_bad_image == "skip":
            log.warning("%s; skipped", problem)
            return None
        raise DataError(f"{problem}. Fix or replace it, or {self.bad_image_hint}.")
