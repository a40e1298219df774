"""Generated COCO-format datasets: coloured shapes (the demo's), or glyphs.

Nothing can be downloaded on the machines detr-ray is tested on, so the demo
and the tests train and evaluate on this. Images are PNGs of circles,
rectangles and triangles in several colours and sizes, some overlapping, on
a noisy background; some images are empty and image sizes vary, so padding is
exercised. Each box is the exact pixel extent of its shape (drawn alone, so
an occluded shape keeps its full box, as COCO's do). The same seed gives the
same files. ``kind="glyphs"`` writes the second dataset of
:mod:`detr_ray.data.glyphs` instead (small glyphs of 12 classes on clutter),
and ``kind="swarm"`` the third, :mod:`detr_ray.data.swarm` (20-60 small
parts of 24 long-tailed classes, elongated boxes, textured backgrounds,
varied image shapes), for checking that a recipe tuned on one generalises.

Layout under ``out_dir``::

    annotations/train.json  annotations/val.json
    train/000000.png ...    val/000000.png ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detr_ray.data.glyphs import GLYPH_CATEGORIES, box_iou, draw_glyph_image
from detr_ray.data.swarm import SWARM_CATEGORIES, draw_swarm_image

CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "rectangle", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
)
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION = 0.15, 0.45  # of the image's short side
# kind -> its categories
KINDS = {"shapes": CATEGORIES, "glyphs": GLYPH_CATEGORIES, "swarm": SWARM_CATEGORIES}


@dataclass(frozen=True)
class SyntheticDataset:
    """Where a generated dataset lives."""

    root: Path

    @property
    def train_ann(self) -> Path:
        return self.root / "annotations" / "train.json"

    @property
    def val_ann(self) -> Path:
        return self.root / "annotations" / "val.json"

    @property
    def train_images(self) -> Path:
        return self.root / "train"

    @property
    def val_images(self) -> Path:
        return self.root / "val"

    def exists(self) -> bool:
        return self.train_ann.is_file() and self.val_ann.is_file()


def generate(
    out_dir: str | os.PathLike,
    num_train: int = 512,
    num_val: int = 64,
    size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    empty_fraction: float = 0.1,
    kind: str = "shapes",
) -> SyntheticDataset:
    """Write the train and val splits; returns their paths.

    Args:
        size: the long side of every image in pixels; the short side is
            between 3/4 of it and all of it.
        max_objects: at most this many shapes per image (shapes only).
        empty_fraction: the share of images without any shape (shapes only).
        kind: ``"shapes"``, ``"glyphs"`` or ``"swarm"`` (see the module docstring).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one train and one val image, got {num_train}, {num_val}")
    dataset = SyntheticDataset(Path(out_dir))
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        rng = np.random.default_rng([seed, split_index])
        image_dir = dataset.root / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images: list[dict] = []
        annotations: list[dict] = []
        for image_id in range(count):
            if kind == "glyphs":
                image, boxes = draw_glyph_image(rng, size)
            elif kind == "swarm":
                image, boxes = draw_swarm_image(rng, size)
            else:
                image, boxes = _draw_image(rng, size, max_objects, empty_fraction)
            file_name = f"{image_id:06d}.png"
            image.save(image_dir / file_name, compress_level=1)
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": image.width,
                    "height": image.height,
                }
            )
            for category_id, (x, y, w, h), area in boxes:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_id,
                        "bbox": [x, y, w, h],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": f"detr-ray synthetic {kind}, {split}, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": list(KINDS[kind]),
        }
        ann_file = dataset.root / "annotations" / f"{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps(coco))
    return dataset


def _draw_image(rng: np.random.Generator, size: int, max_objects: int, empty_fraction: float):
    """One image and its ``(category_id, [x, y, w, h], area)`` boxes."""
    short = int(rng.integers(size * 3 // 4, size + 1))
    width, height = (size, short) if rng.random() < 0.5 else (short, size)
    background = rng.integers(40, 216, size=3)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    num_objects = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    placed: list[tuple[float, float, float, float]] = []
    boxes = []
    for _ in range(num_objects):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        mask = _place_shape(rng, str(category["name"]), width, height, placed)
        if mask is None:
            continue
        colour = _contrasting_colour(rng, background)
        image.paste(colour, mask=mask)
        ys, xs = np.nonzero(np.asarray(mask))
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        placed.append((x1, y1, x2, y2))
        boxes.append((category["id"], [x1, y1, x2 - x1, y2 - y1], int(len(xs))))
    return image, boxes


def _place_shape(rng, kind: str, width: int, height: int, placed) -> Image.Image | None:
    """A mask of one shape that overlaps earlier ones by IoU <= 0.3 (None if no room)."""
    short = min(width, height)
    for _ in range(20):
        w = rng.uniform(MIN_OBJECT_FRACTION, MAX_OBJECT_FRACTION) * short
        h = w * rng.uniform(0.75, 1.33)
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = (x1, y1, x1 + w, y1 + h)
        if all(box_iou(box, other) <= 0.3 for other in placed):
            break
    else:
        return None
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse(box, fill=255)
    elif kind == "rectangle":
        draw.rectangle(box, fill=255)
    else:
        x1, y1, x2, y2 = box
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=255)
    return mask if mask.getbbox() else None


def _contrasting_colour(rng, background) -> tuple[int, int, int]:
    for _ in range(10):
        colour = PALETTE[int(rng.integers(len(PALETTE)))]
        if np.abs(np.asarray(colour) - background).sum() > 150:
            return colour
    r, g, b = (int(255 - c) for c in background)
    return r, g, b
