"""Prediction in one process against the Ray Data pipeline with 1 and 2 actors.

    .venv/bin/python bench/bench_batch_predict.py [--images 96]

The demo's model (``detr_r18_small``, freshly initialised: speed does not
depend on the weights) on the demo's 128 px shapes. Measured in this run:

- each stage alone in this process (median per image): read the file,
  decode + resize, the model, the JSON line;
- in-process prediction (those stages one image after the other);
- ``predict --cluster``'s pipeline on a local Ray of this machine's cores,
  with at most 1 and 2 model actors (Ray's start-up is not timed; the first
  run warms Ray Data up and is not counted).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detr_ray.batch.pipeline import ClusterPrediction, predict_on_cluster
from detr_ray.batch.stages import Detect, decode_and_resize
from detr_ray.checkpoint import checkpoint_dict, load_model, save_checkpoint
from detr_ray.config import AugmentationConfig, preset_config
from detr_ray.data.labels import LabelMap
from detr_ray.data.synthetic import generate
from detr_ray.model.build import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "shapes", 2, args.images, size=128, seed=0)
        config = preset_config("detr_r18_small", num_classes=3)
        checkpoint = Path(tmp) / "model.pt"
        labels = LabelMap((1, 2, 3), ("circle", "rectangle", "triangle"))
        augmentation = AugmentationConfig.scaled(128)
        save_checkpoint(
            checkpoint_dict(build_model(config), config, labels, augmentation), checkpoint
        )
        loaded = load_model(checkpoint, device="cpu")
        files = sorted(data.val_images.iterdir())

        stages: dict[str, list[float]] = {
            "read": [],
            "decode + resize": [],
            "model": [],
            "write": [],
        }
        detect = Detect(loaded, score_threshold=0.5)
        start_all = time.perf_counter()
        for path in files:
            t0 = time.perf_counter()
            row = {"path": str(path), "bytes": path.read_bytes()}
            t1 = time.perf_counter()
            row = decode_and_resize(row, loaded)
            t2 = time.perf_counter()
            batch = {k: [v] for k, v in row.items()}
            found = detect(batch)
            t3 = time.perf_counter()
            json.dumps({"file": str(path), "detections": json.loads(found["detections"][0])})
            t4 = time.perf_counter()
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[name].append(seconds)
        in_process = len(files) / (time.perf_counter() - start_all)

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        rates = {}
        predict_on_cluster(checkpoint, [str(data.val_images)], f"{tmp}/warm-up")
        for actors in (1, 2):
            settings = ClusterPrediction(batch_size=8, max_actors=actors)
            start = time.perf_counter()
            written, _ = predict_on_cluster(
                checkpoint, [str(data.val_images)], f"{tmp}/out{actors}", settings
            )
            rates[actors] = written / (time.perf_counter() - start)
        ray.shutdown()

    print(
        f"{args.images} images of 128 px, detr_r18_small, CPU ({torch.get_num_threads()} threads)"
    )
    for name, times in stages.items():
        print(f"  stage {name:<16} {1000 * statistics.median(times):8.2f} ms/image")
    print(f"{'in-process':<24} {in_process:8.1f} img/s  1.00")
    for actors, rate in rates.items():
        print(f"{f'Ray Data, {actors} actor(s)':<24} {rate:8.1f} img/s  {rate / in_process:.2f}")


if __name__ == "__main__":
    main()
