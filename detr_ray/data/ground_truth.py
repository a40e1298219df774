"""The one ground truth every evaluation scores against: the boxes training uses.

A COCO file from the wild has boxes that run off their image, have zero
size, hold NaN, or lie entirely outside it. Training cleans them
(:func:`~detr_ray.data.annotations.clean_box`): clipped to the image, or
dropped. Scoring against the raw file would count a model that finds every
clipped box exactly as missing some, and every dropped box as a miss no
model can avoid. So training's validation, ``eval --checkpoint`` and ``eval
--results`` all score against :func:`clean_ground_truth` of the file, and
say in one line what cleaning changed (``--raw-ground-truth`` scores the file
as it is, as pycocotools alone would).

Crowd regions are kept as they are: COCOeval's ignore regions. Pure python.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from detr_ray.data.annotations import clean_box


@dataclass
class CleanedGroundTruth:
    """A COCO file's annotations as training and evaluation see them."""

    annotations: list[dict]  # crowd as they are; the rest clipped ([x, y, w, h]), valid only
    # image id -> [(xyxy clipped to the image, category id)] of its training boxes
    targets: dict[int, list[tuple[list[float], int]]] = field(default_factory=dict)
    clipped: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    crowd: int = 0

    def coco_dict(self, data: dict) -> dict:
        """``data`` (a COCO dict) with these annotations instead of its own."""
        return {
            "images": data["images"],
            "annotations": self.annotations,
            "categories": data["categories"],
        }

    def note(self) -> str:
        """What cleaning changed, in a line."""
        dropped = sum(self.dropped.values())
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()))
        return (
            f"{self.clipped} boxes clipped to their image, {dropped} dropped"
            + (f" ({reasons})" if reasons else "")
            + f"; {self.crowd} crowd boxes are ignore regions"
        )


def clean_ground_truth(data: dict) -> CleanedGroundTruth:
    """Clean every box of ``data`` (a dict from
    :func:`~detr_ray.data.annotations.load_coco_json`), image by image."""
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    cleaned = CleanedGroundTruth(annotations=[])
    for img in data["images"]:
        width, height = int(img["width"]), int(img["height"])
        targets = cleaned.targets.setdefault(img["id"], [])
        for ann in by_image[img["id"]]:
            if ann["iscrowd"]:
                cleaned.crowd += 1
                cleaned.annotations.append(ann)
                continue
            box, reason = clean_box(ann["bbox"], width, height)
            if box is None:
                cleaned.dropped[reason] += 1
                continue
            x1, y1, x2, y2 = box
            x, y, w, h = (float(v) for v in ann["bbox"])
            if any(abs(a - b) > 1e-6 for a, b in zip(box, (x, y, x + w, y + h))):
                cleaned.clipped += 1
            cleaned.annotations.append({**ann, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            targets.append((box, ann["category_id"]))
    return cleaned
