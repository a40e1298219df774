"""What a COCO dataset holds, and what in it would stop a training run.

:func:`check_dataset` reads an annotation file and its image folder the way
training will (the same validation, the same box cleaning), lists the folder
once, reads every image's header (in threads) to compare its size with the
annotation's, and returns a :class:`DatasetReport`: counts and distributions
a user wants before a long run, and the problems. ``detr-ray data check``
prints it; ``detr-ray train`` runs it on the driver before Ray starts.

In object storage (``s3://``, ``gs://``) the image prefix is listed once, and
no image is read: a header costs a request per image there, so sizes are
checked as training reads each image (``headers_read`` says which).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from detr_ray import storage
from detr_ray.data.annotations import clean_box, load_coco_json
from detr_ray.data.image_folder import LocalFolder, open_image_folder
from detr_ray.data.images import read_sizes
from detr_ray.errors import DataError
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions

MAX_EXAMPLES = 3


@dataclass
class DatasetReport:
    """One annotation file and image folder, as training would see them."""

    ann_file: str  # a path or a URI
    image_dir: str
    num_images: int = 0
    num_annotations: int = 0
    per_category: dict[str, int] = field(default_factory=dict)  # "name (id N)" -> boxes
    empty_images: int = 0
    crowd_boxes: int = 0
    invalid_boxes: Counter = field(default_factory=Counter)  # reason -> count
    invalid_examples: list[str] = field(default_factory=list)
    clipped_boxes: int = 0
    filled_fields: dict[str, int] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)
    boxes_per_image: list[int] = field(default_factory=list)
    headers_read: bool = False  # every present image's size compared with its annotation

    def problems(self, skip_bad_images: bool = False, hint: str = "") -> list[str]:
        """What would stop training (nothing with ``skip_bad_images`` but an empty set)."""
        found = []
        bad = [
            ("missing", self.missing_images),
            ("unreadable", self.unreadable_images),
            ("of another size than the annotation says", self.size_mismatches),
        ]
        for what, items in bad:
            if items and not skip_bad_images:
                found.append(
                    f"{len(items)} of {self.num_images} images in {self.ann_file} are {what} "
                    f"(folder {self.image_dir}), e.g. {'; '.join(items[:MAX_EXAMPLES])}"
                    + (f"; {hint}" if hint else "")
                )
        usable = self.num_images - (
            len(self.missing_images) + len(self.unreadable_images) + len(self.size_mismatches)
        )
        if usable <= 0:
            found.append(f"{self.ann_file}: no usable image (folder {self.image_dir})")
        return found

    def format(self) -> str:
        """The report as a few aligned lines of text."""
        lines = [
            f"annotation file  {self.ann_file}",
            f"image folder     {self.image_dir}",
            f"images           {self.num_images} ({self.empty_images} without any box)",
            f"boxes            {self.num_annotations} ({self.crowd_boxes} crowd, left out of "
            f"training; {self.clipped_boxes} clipped to their image)",
        ]
        for name, count in sorted(self.per_category.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<30} {count}")
        if self.invalid_boxes:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.invalid_boxes.items()))
            lines.append(
                f"invalid boxes    {sum(self.invalid_boxes.values())} ({reasons}), "
                f"dropped: e.g. {'; '.join(self.invalid_examples)}"
            )
        for name, count in self.filled_fields.items():
            if count:
                lines.append(f"filled in        {count} annotations without '{name}'")
        if self.widths:
            lines.append(f"image width      {_distribution(self.widths)}")
            lines.append(f"image height     {_distribution(self.heights)}")
            lines.append(f"boxes per image  {_distribution(self.boxes_per_image)}")
        if not self.headers_read:
            lines.append(
                "image sizes      not compared with the annotations here (object "
                "storage: training checks each image as it reads it)"
            )
        for what, items in (
            ("missing", self.missing_images),
            ("unreadable", self.unreadable_images),
            ("size differs", self.size_mismatches),
        ):
            if items:
                lines.append(f"{what:<16} {len(items)}: {'; '.join(items[:MAX_EXAMPLES])}")
        return "\n".join(lines)


def check_dataset(
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    read_headers: bool = True,
    options: StorageOptions = DEFAULT_OPTIONS,
) -> DatasetReport:
    """Read ``ann_file`` and list ``image_dir`` (see the module docstring);
    ``options``: an object store's endpoint and region.

    Raises:
        DataError: the annotation file itself is missing or malformed, or the
            image folder does not exist or cannot be listed.
    """
    data = load_coco_json(ann_file, options)
    report = DatasetReport(_name(ann_file), _name(image_dir))
    folder = open_image_folder(image_dir, options)
    try:
        exists = folder.exists()
    except OSError as e:
        raise DataError(
            f"image folder {report.image_dir} cannot be listed: {e} (check the endpoint, "
            "region and credentials: run.storage_endpoint, run.storage_region, AWS_* variables)"
        ) from None
    if not exists:
        raise DataError(
            f"image folder {report.image_dir} (for {report.ann_file}) does not exist or is not "
            "a folder"
        )
    report.filled_fields = dict(data["filled_fields"])
    names = {c["id"]: f"{c['name']} (id {c['id']})" for c in data["categories"]}
    per_category: Counter = Counter()
    images = {img["id"]: img for img in data["images"]}
    boxes_in: Counter = Counter()
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        if ann["iscrowd"]:
            report.crowd_boxes += 1
            continue
        box, reason = clean_box(ann["bbox"], int(img["width"]), int(img["height"]))
        if box is None:
            report.invalid_boxes[reason] += 1
            if len(report.invalid_examples) < MAX_EXAMPLES:
                report.invalid_examples.append(
                    f"annotation id {ann['id']} bbox {ann['bbox']} in {img['file_name']}"
                )
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        unclipped = (x, y, x + w, y + h)
        if any(abs(a - b) > 1e-6 for a, b in zip(box, unclipped)):
            report.clipped_boxes += 1
        per_category[names[ann["category_id"]]] += 1
        boxes_in[ann["image_id"]] += 1
    report.num_images = len(data["images"])
    report.num_annotations = len(data["annotations"])
    report.per_category = {names[c["id"]]: per_category[names[c["id"]]] for c in data["categories"]}
    report.boxes_per_image = [boxes_in[img["id"]] for img in data["images"]]
    report.empty_images = sum(1 for n in report.boxes_per_image if n == 0)
    report.widths = [int(img["width"]) for img in data["images"]]
    report.heights = [int(img["height"]) for img in data["images"]]
    file_names = [img["file_name"] for img in data["images"]]
    missing = set(folder.missing(file_names))
    report.missing_images = [
        f"{n!r} (image id {img['id']})"
        for n, img in zip(file_names, data["images"])
        if n in missing
    ]
    if read_headers and isinstance(folder, LocalFolder):
        report.headers_read = True
        present = [img for img in data["images"] if img["file_name"] not in missing]
        sizes = read_sizes([folder.path / img["file_name"] for img in present])
        for img, size in zip(present, sizes):
            where = f"{img['file_name']!r} (image id {img['id']})"
            if isinstance(size, str):
                report.unreadable_images.append(f"{where}: {size}")
            elif size != (int(img["width"]), int(img["height"])):
                report.size_mismatches.append(
                    f"{where} is {size[0]}x{size[1]}, the annotation says "
                    f"{int(img['width'])}x{int(img['height'])}"
                )
    return report


def _name(location: str | os.PathLike) -> str:
    return storage.without_query(str(location)) if storage.is_uri(location) else str(location)


def _distribution(values: list[int]) -> str:
    array = np.asarray(values)
    low, median, high = np.percentile(array, [0, 50, 100])
    return f"min {low:g}  median {median:g}  max {high:g}"
