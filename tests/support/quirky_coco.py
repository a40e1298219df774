"""A small COCO-format set with the quirks of real users' data, generated for the tests.

- non-contiguous category ids (5, 17, 42), two of them named in Chinese
  (``四角``, ``三角``: the same string once made safe for MLflow);
- file names in subfolders; grey, RGBA, palette and 16-bit PNGs, a JPEG;
- a crowd box with an RLE mask; boxes running off the image (clipped), of
  zero width, with NaN, and entirely outside the image (dropped);
- a validation file without ``area`` and ``iscrowd``;
- a larger image (1000 x 700).

Shapes are drawn where the boxes say, so a model can learn them, and the
boxes in the file are what the tests compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [
    {"id": 5, "name": "四角"},
    {"id": 17, "name": "三角"},
    {"id": 42, "name": "circle"},
]
# (file name, width, height, mode); each image gets the boxes below
IMAGES = [
    ("rgb/a.png", 96, 80, "RGB"),
    ("grey/b.png", 80, 96, "L"),
    ("alpha/c.png", 96, 96, "RGBA"),
    ("palette/d.png", 64, 80, "P"),
    ("deep/e.png", 96, 72, "I;16"),
    ("photos/f.jpg", 1000, 700, "RGB"),
]


def boxes_for(index: int, width: int, height: int) -> list[tuple[int, list[float]]]:
    """(category id, [x, y, w, h]) of the valid boxes of image ``index``."""
    s = min(width, height)
    first = (CATEGORIES[index % 3]["id"], [0.1 * width, 0.15 * height, 0.3 * s, 0.35 * s])
    second = (CATEGORIES[(index + 1) % 3]["id"], [0.55 * width, 0.5 * height, 0.3 * s, 0.3 * s])
    return [first, second]


def write_quirky_coco(root: Path) -> dict[str, Path]:
    """Write ``root/images/...``, ``root/train.json`` and ``root/val.json``; returns their paths."""
    images, annotations = [], []
    rng = np.random.default_rng(0)
    ann_id = 1
    for index, (name, width, height, mode) in enumerate(IMAGES):
        image_id = 100 + 7 * index  # not contiguous either
        boxes = boxes_for(index, width, height)
        _draw(root / "images" / name, width, height, mode, [b for _, b in boxes], rng)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for category_id, bbox in boxes:
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    first = images[0]
    odd = [
        [first["width"] - 10, 5.0, 40.0, 20.0],  # runs off the right edge: clipped
        [10.0, 10.0, 0.0, 15.0],  # zero width: dropped
        [float("nan"), 3.0, 5.0, 5.0],  # NaN: dropped
        [500.0, 500.0, 10.0, 10.0],  # entirely outside: dropped
    ]
    for bbox in odd:
        annotations.append(
            {
                "id": ann_id,
                "image_id": first["id"],
                "category_id": 42,
                "bbox": bbox,
                "area": 100.0,
                "iscrowd": 0,
            }
        )
        ann_id += 1
    annotations.append(
        {
            "id": ann_id,
            "image_id": images[5]["id"],
            "category_id": 5,
            "iscrowd": 1,
            "bbox": [600.0, 400.0, 100.0, 80.0],
            "area": 8000.0,
            "segmentation": {"counts": [0, 10, 10], "size": [700, 1000]},
        }
    )
    train = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    # the validation file of an exporter that writes neither area nor iscrowd
    val_annotations = [
        {k: v for k, v in a.items() if k not in ("area", "iscrowd", "segmentation")}
        for a in annotations
        if not a.get("iscrowd")
    ]
    val = {"images": images, "annotations": val_annotations, "categories": CATEGORIES}
    paths = {"train_ann": root / "train.json", "val_ann": root / "val.json"}
    paths["train_ann"].write_text(json.dumps(train, ensure_ascii=False))
    paths["val_ann"].write_text(json.dumps(val, ensure_ascii=False))
    paths["images"] = root / "images"
    return paths


def _draw(path: Path, width: int, height: int, mode: str, boxes, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 60, size=(height, width, 3)).astype(np.uint8)
    for n, (x, y, w, h) in enumerate(boxes):
        x1, y1 = int(x), int(y)
        x2, y2 = min(width, int(x + w)), min(height, int(y + h))
        pixels[y1:y2, x1:x2] = (200, 60 + 80 * n, 40)
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(grey).save(path)  # mode I;16
        return
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode != "RGB":
        image = image.convert(mode)
    if path.suffix == ".jpg":
        image.save(path, quality=95)
    else:
        image.save(path)
