"""How long the checks before Ray take on a COCO-sized training set.

Generates (once, in --root) 118,287 small PNG files in one folder and a COCO
annotation file listing them with 7 boxes each (860k annotations, as
COCO train2017), then times, in the same run:

- the file-presence check: one listing of the folder (what detr-ray does)
  against one ``stat`` per image (the baseline: ``Path.is_file`` per record);
- reading every image's header (size check), 8 threads;
- the whole ``check_dataset`` (parse + validate + clean boxes + list + headers).

    .venv/bin/python bench/bench_data_check.py --root /tmp/coco_sized
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from PIL import Image

from detr_ray.data.check import check_dataset
from detr_ray.data.images import missing_files, read_sizes

NUM_IMAGES = 118_287
BOXES_PER_IMAGE = 7


def make(root: Path, count: int) -> tuple[Path, Path]:
    images = root / "train2017"
    ann = root / "instances.json"
    if ann.is_file():
        return ann, images
    images.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(buffer, format="PNG")
    png = buffer.getvalue()
    records, annotations = [], []
    for i in range(count):
        name = f"{i:012d}.png"
        (images / name).write_bytes(png)
        records.append({"id": i, "file_name": name, "width": 64, "height": 48})
        for j in range(BOXES_PER_IMAGE):
            annotations.append(
                {
                    "id": i * BOXES_PER_IMAGE + j,
                    "image_id": i,
                    "category_id": 1 + j % 80,
                    "bbox": [1.0 + j, 2.0, 10.0, 8.0],
                    "area": 80.0,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"class {c}"} for c in range(1, 81)]
    ann.write_text(
        json.dumps({"images": records, "annotations": annotations, "categories": categories})
    )
    return ann, images


def timed(label: str, function) -> float:
    started = time.perf_counter()
    function()
    seconds = time.perf_counter() - started
    print(f"{label:<52} {seconds:7.2f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/tmp/detr_ray_coco_sized", help="where to generate")
    parser.add_argument("--images", type=int, default=NUM_IMAGES)
    args = parser.parse_args()
    root = Path(args.root)
    started = time.perf_counter()
    ann, images = make(root, args.images)
    print(
        f"dataset: {args.images:,} images in {images} ({time.perf_counter() - started:.0f} s "
        "to generate or find)\n",
        flush=True,
    )
    names = [f"{i:012d}.png" for i in range(args.images)]
    listing = timed("presence: one folder listing (detr-ray)", lambda: missing_files(images, names))
    stats = timed(
        "presence: one stat per image (baseline)", lambda: [(images / n).is_file() for n in names]
    )
    timed(
        "headers: every image's size, one process per core",
        lambda: read_sizes([images / n for n in names]),
    )
    timed(
        "check_dataset: parse, validate, clean, list, headers", lambda: check_dataset(ann, images)
    )
    print(f"\nlisting vs stat per image: {stats / listing:.1f}x")


if __name__ == "__main__":
    main()
