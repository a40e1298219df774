"""A checkpoint written to and read from object storage, against the local file system.

What a run does at each report: the rank-0 worker saves ``checkpoint.pt`` in
a temporary folder and Ray Train copies the folder to the run's storage
(``pyarrow.fs.copy_files``); a resume or ``predict`` reads it back
(:func:`detr_ray.checkpoint.load_checkpoint`). This times both against a
local storage folder and against an S3 API (moto's server, started here on
127.0.0.1), interleaved, median of ``--reps``, for the demo's model with its
optimizer state and for ``detr_r50``'s weights.

    .venv/bin/python bench/bench_storage.py --reps 5

On loopback the absolute S3 times mean little (no network); the ratio shows
the cost of the S3 protocol itself (multipart upload, one download into memory).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers (tests.support): the same S3 server

from detr_ray import storage  # noqa: E402
from detr_ray.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint  # noqa: E402
from detr_ray.model.build import build_preset  # noqa: E402
from detr_ray.storage import StorageOptions  # noqa: E402

from tests.support.servers import s3_server  # noqa: E402


def checkpoints() -> dict[str, dict]:
    small = build_preset("detr_r18_small", num_classes=3, backbone_stages=3)
    optimizer = torch.optim.AdamW(small.parameters())
    small(torch.zeros(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))[0].sum().backward()
    optimizer.step()
    demo = {"model": small.state_dict(), "optimizer": optimizer.state_dict()}
    r50 = {"model": build_preset("detr_r50", num_classes=91).state_dict()}
    return {"demo (r18_small + AdamW state)": demo, "detr_r50 weights": r50}


def write(checkpoint: dict, destination: str, options: StorageOptions) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(checkpoint, Path(tmp) / CHECKPOINT_FILE)
        filesystem, path = storage.open_location(destination, options)
        filesystem.create_dir(path, recursive=True)
        pafs.copy_files(tmp, path, destination_filesystem=filesystem)  # as Ray Train does


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with s3_server("b01") as endpoint:
        measure(endpoint, args.reps)


def measure(endpoint: str, reps: int) -> None:
    options = StorageOptions(endpoint=endpoint)
    with tempfile.TemporaryDirectory() as local_root:
        stores = {"local": local_root, "s3": "s3://b01/runs"}
        for name, checkpoint in checkpoints().items():
            times: dict[str, dict[str, list[float]]] = {
                s: {"write": [], "read": []} for s in stores
            }
            for rep in range(reps):
                for store, root in stores.items():
                    destination = storage.join(root, f"c{rep}")
                    started = time.perf_counter()
                    write(checkpoint, destination, options)
                    times[store]["write"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    load_checkpoint(destination, options)
                    times[store]["read"].append(time.perf_counter() - started)
            size = (
                len(storage.read_bytes(storage.join(stores["s3"], "c0", CHECKPOINT_FILE), options))
                / 1e6
            )
            print(f"\n{name}: {size:.1f} MB")
            for what in ("write", "read"):
                local = statistics.median(times["local"][what])
                s3 = statistics.median(times["s3"][what])
                ratio = s3 / local
                print(f"  {what:<5} local {local:6.3f} s   s3 {s3:6.3f} s   ratio {ratio:5.1f}x")


if __name__ == "__main__":
    main()
