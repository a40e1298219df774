"""COCO evaluation at COCO's size: pycocotools against faster-coco-eval.

    python bench/bench_coco_eval.py [--images 5000] [--detections 100] [--reps 3]

Generates a ground truth shaped like COCO val2017 (``--images`` images of
640 x 480, 80 categories, about 7 objects an image in all three area ranges,
1% crowd regions) and ``--detections`` results per image (60% near an
object, the rest anywhere), then scores them with
:func:`detr_ray.evaluation.coco_eval.evaluate` through each backend, interleaved, and
prints the median seconds, the speed-up, and the largest difference over
every metric (the 12 numbers and per-class AP).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from detr_ray.data.annotations import coco_from_dict
from detr_ray.evaluation.coco_eval import evaluate


def make_set(num_images: int, detections: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    categories = [{"id": c + 1, "name": f"class{c}"} for c in range(80)]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": 640, "height": 480})
        # areas from about 10 to 200,000 px^2: small, medium and large objects
        sides = np.exp(rng.uniform(np.log(4), np.log(400), (int(rng.poisson(7)), 2)))
        own = []
        for w, h in sides:
            x, y = rng.uniform(0, 640 - min(w, 639)), rng.uniform(0, 480 - min(h, 479))
            box = [float(x), float(y), float(min(w, 640 - x)), float(min(h, 480 - y))]
            own.append((int(rng.integers(1, 81)), box))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": own[-1][0],
                 "bbox": box, "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.01)}
            )  # fmt: skip
        for _ in range(detections):
            if own and rng.random() < 0.6:
                category, (x, y, w, h) = own[int(rng.integers(len(own)))]
                x, y, w, h = np.asarray([x, y, w, h]) + rng.normal(0, 0.1, 4) * [w, h, w, h]
                if rng.random() < 0.2:
                    category = int(rng.integers(1, 81))
            else:
                w, h = np.exp(rng.uniform(np.log(4), np.log(400), 2))
                x, y, category = rng.uniform(0, 600), rng.uniform(0, 440), int(rng.integers(1, 81))
            results.append(
                {"image_id": image_id, "category_id": category,
                 "bbox": [float(x), float(y), max(float(w), 1.0), max(float(h), 1.0)],
                 "score": float(rng.random())}
            )  # fmt: skip
    ground_truth = {"images": images, "categories": categories, "annotations": annotations}
    return coco_from_dict(ground_truth), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    coco, results = make_set(args.images, args.detections)
    print(
        f"{args.images} images, {len(coco.dataset['annotations'])} objects, "
        f"{len(results)} detections"
    )
    backends = ("pycocotools", "faster-coco-eval")
    times: dict[str, list[float]] = {b: [] for b in backends}
    metrics = {}
    for _ in range(args.reps):
        for backend in backends:
            start = time.perf_counter()
            metrics[backend], _ = evaluate(coco, results, backend=backend)
            times[backend].append(time.perf_counter() - start)
    reference, faster = metrics["pycocotools"], metrics["faster-coco-eval"]
    difference = max(abs(faster[k] - v) for k, v in reference.items() if not math.isnan(v))
    undefined_alike = all(math.isnan(faster[k]) == math.isnan(v) for k, v in reference.items())
    slow, fast = (statistics.median(times[b]) for b in backends)
    print(f"pycocotools      {slow:7.2f} s (median of {args.reps})")
    print(f"faster-coco-eval {fast:7.2f} s")
    print(f"speed-up {slow / fast:.1f}x; AP {reference['AP']:.4f}; {len(reference)} metrics, "
          f"largest difference {difference:.1e}, undefined alike: {undefined_alike}")  # fmt: skip


if __name__ == "__main__":
    main()
