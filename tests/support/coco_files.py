"""Write small COCO-format datasets with chosen flaws, for the data tests."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def write_dataset(root, images, annotations, categories=None, make_files=True):
    """``images``: (id, file_name, width, height); ``annotations``: dicts
    (``id`` filled in); returns (ann_file, image_dir)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    data = {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": [{"id": n + 1, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
        "categories": categories,
    }
    if make_files:
        rng = np.random.default_rng(0)
        for _, file_name, w, h in images:
            pixels = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(image_dir / file_name)
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, image_dir
