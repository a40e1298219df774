"""Training images read from object storage, against local disk, against the step.

    .venv/bin/python bench/bench_bucket_data.py [--images 256] [--reps 3]

The CPU demo's data (synthetic shapes, 128 px PNGs) on local disk and in a
bucket of an S3 API (moto's server, started here on 127.0.0.1 in a process of
its own, stopped by its handle: in this process its Python would compete with
the reader's for the interpreter lock). For each it
times what the loader of one worker does per batch of 8
(:meth:`CocoDetection.__getitems__`: read the batch's images on
``data.read_threads`` threads, decode, augment), median of ``--reps`` passes:

- local disk, then the bucket with 1, 4 and 16 read threads (no cache);
- the bucket with the node cache: the first epoch (it fills the cache)
  against a later one (it reads the node's disk);
- the demo's training step (``detr_r18_small``, batch 8) in images/s, so
  that loader / step > 1 says the loader keeps up.

Every rate is measured in this run, and so is the time of one GET from this
server (sequential, median): the note printed at the end scales the bucket's
rate to a real store's latency.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' helpers (tests.support): the same S3 server

from detr_ray import storage  # noqa: E402
from detr_ray.config.augmentation import AugmentationConfig  # noqa: E402
from detr_ray.data.coco import CocoDetection  # noqa: E402
from detr_ray.data.collate import PadCollate  # noqa: E402
from detr_ray.data.node_cache import NodeCache  # noqa: E402
from detr_ray.data.synthetic import generate  # noqa: E402
from detr_ray.data.transforms import build_transforms  # noqa: E402
from detr_ray.model.build import build_preset  # noqa: E402
from detr_ray.storage import StorageOptions  # noqa: E402

from tests.support.ports import free_port  # noqa: E402
from tests.support.servers import S3_REGION  # noqa: E402

BATCH = 8
BUCKET = "bench-data"


@contextlib.contextmanager
def s3_server_process(bucket: str) -> Iterator[str]:
    """moto's S3 API in a child process on 127.0.0.1 holding ``bucket``; its endpoint."""
    import os

    import boto3

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION).create_bucket(
            Bucket=bucket
        )
        yield endpoint
    finally:
        server.terminate()
        server.wait(30)


def epoch_rate(dataset: CocoDetection) -> float:
    """Images per second for one pass over ``dataset`` in batches of ``BATCH``."""
    indices = list(range(len(dataset)))
    start = time.perf_counter()
    for first in range(0, len(indices), BATCH):
        dataset.__getitems__(indices[first : first + BATCH])
    return len(indices) / (time.perf_counter() - start)


def get_latency_ms(dataset: CocoDetection, count: int) -> float:
    """Median milliseconds of one GET (no decode), one after the other."""
    times = []
    for record in dataset.records[:count]:
        start = time.perf_counter()
        dataset.folder.read(record.file_name)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def step_rate(dataset: CocoDetection, steps: int = 4) -> float:
    model = build_preset("detr_r18_small", num_classes=3, backbone_stages=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = PadCollate(size_divisor=32)(dataset.__getitems__(list(range(BATCH))))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        logits, boxes = model(*batch.inputs())[:2]
        (logits.sum() + boxes.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one worker's core, as in the demo's 2 workers on 2 cores
    transforms = build_transforms(AugmentationConfig.scaled(128), train=True)
    with tempfile.TemporaryDirectory() as tmp, s3_server_process(BUCKET) as endpoint:
        data = generate(Path(tmp) / "shapes", args.images, 8, size=128, seed=0)
        options = StorageOptions(endpoint, S3_REGION)
        root = data.train_ann.parents[1]
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = path.relative_to(root).as_posix()
            storage.write_bytes(f"s3://{BUCKET}/shapes/{key}", path.read_bytes(), options)
        ann, images = f"s3://{BUCKET}/shapes/annotations/train.json", f"s3://{BUCKET}/shapes/train"

        def bucket(threads: int, cache: NodeCache | None = None) -> CocoDetection:
            return CocoDetection(
                ann, images, transforms, storage=options, cache=cache, read_threads=threads
            )

        local = CocoDetection(data.train_ann, data.train_images, transforms, read_threads=1)
        rows: list[tuple[str, float]] = []
        rates = [epoch_rate(local) for _ in range(args.reps)]
        rows.append(("local disk, 1 thread", statistics.median(rates)))
        for threads in (1, 4, 16):
            dataset = bucket(threads)
            rates = [epoch_rate(dataset) for _ in range(args.reps)]
            rows.append((f"bucket, {threads} read threads", statistics.median(rates)))
        first, later = [], []
        for rep in range(args.reps):
            cache = NodeCache(Path(tmp) / f"cache{rep}", limit_gb=10)
            dataset = bucket(4, cache)
            first.append(epoch_rate(dataset))
            later.append(epoch_rate(dataset))
        rows.append(("bucket + cache, first epoch (4 threads)", statistics.median(first)))
        rows.append(("bucket + cache, a later epoch", statistics.median(later)))
        step = step_rate(local)
        get_ms = get_latency_ms(bucket(1), 32)

    base = rows[0][1]
    print(f"{args.images} images of 128 px, batches of {BATCH}, decode + the demo's augmentation")
    print(f"{'loader (one worker process)':<42} {'img/s':>8} {'/ local':>8} {'/ step':>8}")
    for name, rate in rows:
        print(f"{name:<42} {rate:8.1f} {rate / base:8.2f} {rate / step:8.2f}")
    print(f"{'training step (detr_r18_small, batch 8)':<42} {step:8.1f}")
    print(f"one GET from this server, one after the other: {get_ms:.1f} ms (median)")
    print(
        "note: T read threads wait for at most T GETs at once, so a loader process reads "
        "at most T / latency images/s: at a real store's 20-50 ms per GET, 1 thread gives "
        "20-50 img/s, 4 threads 80-200, 16 threads 320-800 (if the server keeps up: moto's "
        "one Python process does not, which is why threads gain little above). A GPU "
        "step of DETR-R50 takes about 40-100 img/s per device: 1 thread starves it, 4-16 "
        "threads per worker (times data.num_workers loader processes) keep up, and later "
        "epochs read the node cache."
    )


if __name__ == "__main__":
    main()
