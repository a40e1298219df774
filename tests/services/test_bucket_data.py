"""Datasets read where they live: a bucket on a real S3 API (moto's server on
127.0.0.1, started and stopped by this module), against the same files on disk.

- items, the checks before Ray and ``data check`` read the bucket as they read a folder;
- training from the bucket takes the same steps, to 1e-6, as from disk;
- an object that disappears mid-run stops with its URI and image id, or is
  skipped; a node-local cache serves it instead, written atomically;
- a server that stalls for seconds delays the reads but fails none;
- a missing bucket or object stops before Ray naming the URI.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from detr_ray import storage
from detr_ray.cli import main as cli_main
from detr_ray.config import ExperimentConfig
from detr_ray.data.annotations import load_coco_json
from detr_ray.data.coco import CocoDetection
from detr_ray.data.node_cache import PART_SUFFIX, NodeCache
from detr_ray.errors import DataError
from detr_ray.storage import StorageOptions
from detr_ray.train.build import build_engine
from detr_ray.train.prepare import prepare_run

from tests.support.experiments import tiny_experiment
from tests.support.servers import S3_REGION, s3_server, upload_dataset
from tests.support.stalling_proxy import StallingProxy

BUCKET = "detr-data"


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def dataset(make_shapes):
    return make_shapes(num_train=8, num_val=4, size=64, seed=11)


def _upload(dataset, prefix: str, endpoint: str) -> str:
    """The whole generated set to ``s3://BUCKET/prefix/...``; returns that URI."""
    upload_dataset(dataset, f"s3://{BUCKET}/{prefix}", endpoint)
    return f"s3://{BUCKET}/{prefix}"


def _delete(endpoint: str, key: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name=S3_REGION).delete_object(
        Bucket=BUCKET, Key=key
    )


def _data_section(dataset, where: str) -> dict:
    """``data`` paths of the generated set, under ``where`` (its folder or a bucket URI)."""
    root = dataset.train_ann.parents[1]

    def at(path: Path) -> str:
        return f"{where}/{path.relative_to(root).as_posix()}"

    return {
        "train_ann": at(dataset.train_ann),
        "train_images": at(dataset.train_images),
        "val_ann": at(dataset.val_ann),
        "val_images": at(dataset.val_images),
    }


def _config(dataset, tmp_path, where: str, endpoint: str, **data) -> ExperimentConfig:
    raw = tiny_experiment(
        dataset,
        tmp_path / "runs",
        "from-bucket",
        data={**_data_section(dataset, where), **data},
        train={"batch_size": 4, "log_every": 1},
        scaling={"num_workers": 1},
        run={"storage_endpoint": endpoint, "storage_region": S3_REGION},
    )
    return ExperimentConfig.from_dict(raw)


def _step_losses(config: ExperimentConfig) -> list[dict[str, float]]:
    prepared = prepare_run(config)
    engine = build_engine(prepared.config, prepared.label_map)
    logs: list = []
    engine.train_epoch(on_log=logs.append)
    return [log.metrics for log in logs]


def test_a_set_in_a_bucket_reads_and_trains_as_it_does_from_disk(s3, dataset, tmp_path):
    options = StorageOptions(s3, S3_REGION)
    uri = _upload(dataset, "shapes", s3)
    local = _config(dataset, tmp_path, str(dataset.train_ann.parents[1]), s3)
    bucket = _config(dataset, tmp_path, uri, s3, read_threads=4)

    # the same items, read one at a time and a batch at once
    from_disk = CocoDetection(local.data.train_ann, local.data.train_images)
    from_bucket = CocoDetection(
        bucket.data.train_ann, bucket.data.train_images, storage=options, read_threads=4
    )
    assert from_bucket.image_ids == from_disk.image_ids
    for (image, target), (disk_image, disk_target) in zip(
        from_bucket.__getitems__(list(range(len(from_disk)))),
        (from_disk[i] for i in range(len(from_disk))),
    ):
        assert np.array_equal(np.asarray(image), np.asarray(disk_image))
        assert torch.equal(target["boxes_xyxy"], disk_target["boxes_xyxy"])
        assert torch.equal(target["labels"], disk_target["labels"])
    assert from_bucket.ann_file == f"{uri}/annotations/train.json"

    # the checks before Ray: the annotations shipped to the workers, not a local path
    prepared = prepare_run(bucket)
    assert prepared.config.data.train_images == bucket.data.train_images
    assert prepared.annotations["val"] == load_coco_json(local.data.val_ann)
    assert prepared.annotations["train"] == load_coco_json(local.data.train_ann)

    # one epoch, step by step: the same losses from the bucket as from disk
    disk_losses, bucket_losses = _step_losses(local), _step_losses(bucket)
    assert len(disk_losses) == len(bucket_losses) == 2  # 8 images, batch 4
    for disk_step, bucket_step in zip(disk_losses, bucket_losses):
        assert disk_step.keys() == bucket_step.keys()
        for key, value in disk_step.items():
            if "time" not in key and "per_s" not in key:
                assert bucket_step[key] == pytest.approx(value, abs=1e-6, rel=1e-6), key


def test_an_object_gone_mid_run_stops_or_is_skipped_and_the_cache_serves_it(s3, dataset, tmp_path):
    options = StorageOptions(s3, S3_REGION)
    uri = _upload(dataset, "gone", s3)
    ann, images = f"{uri}/annotations/train.json", f"{uri}/train"
    cache = NodeCache(tmp_path / "cache", limit_gb=1.0)
    cached = CocoDetection(ann, images, storage=options, cache=cache, read_threads=4)
    strict = CocoDetection(ann, images, storage=options)
    skipping = CocoDetection(ann, images, storage=options, on_bad_image="skip")
    first = [image for image, _ in cached.__getitems__([0, 1, 2])]  # now on the node's disk

    # every cached copy is the object itself, at its URI's place, with no part file left
    copies = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert [p.relative_to(tmp_path / "cache").as_posix() for p in copies] == [
        f"s3/{BUCKET}/gone/train/{cached.records[i].file_name}" for i in range(3)
    ]
    for i, copy in enumerate(copies):
        key = f"{uri}/train/{cached.records[i].file_name}"
        assert copy.read_bytes() == storage.read_bytes(key, options)

    record = strict.records[1]
    _delete(s3, f"gone/train/{record.file_name}")
    with pytest.raises(DataError) as stopped:
        strict[1]
    message = str(stopped.value)
    assert f"{uri}/train/{record.file_name}" in message and f"image id {record.image_id}" in message
    assert "data.on_bad_image: skip" in message
    assert skipping[1] is None and skipping[0] is not None
    again = cached.__getitems__([1])[0][0]  # from the cache: the bucket has it no more
    assert np.array_equal(np.asarray(again), np.asarray(first[1]))


def test_a_stalling_server_delays_the_reads_and_fails_none(s3, dataset):
    options = StorageOptions(s3, S3_REGION)
    uri = _upload(dataset, "stalls", s3)
    ann, images = f"{uri}/annotations/train.json", f"{uri}/train"
    direct = CocoDetection(ann, images, storage=options)
    everything = list(range(len(direct)))
    expected = [np.asarray(image) for image, _ in direct.__getitems__(everything)]
    with StallingProxy(int(s3.rsplit(":", 1)[1])) as proxy:
        stalling = CocoDetection(
            ann, images, storage=StorageOptions(proxy.endpoint, S3_REGION), read_threads=4
        )
        proxy.stall(3.0)
        start = time.monotonic()
        read = stalling.__getitems__(everything)
        waited = time.monotonic() - start
        assert proxy.forwarded_chunks > 0  # the reads went through the proxy
    assert waited >= 2.5
    assert all(np.array_equal(np.asarray(image), e) for (image, _), e in zip(read, expected))


def test_a_killed_writer_leaves_no_torn_copy_in_the_cache(tmp_path):
    """A process SIGKILLed while it writes copies: every copy under its final name
    is whole; only part files may be left, and a reader never takes one."""
    root, size = tmp_path / "cache", 8_000_000
    code = (
        "import sys\n"
        "from detr_ray.data.node_cache import NodeCache\n"
        f"cache = NodeCache({str(root)!r}, limit_gb=100)\n"
        "for i in range(10_000):\n"
        f"    cache.put(f's3://b/p/{{i % 5}}.bin', bytes([i % 251]) * {size})\n"
        "    if i == 5: print('writing', flush=True)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    finals = [p for p in root.rglob("*") if p.is_file() and PART_SUFFIX not in p.name]
    assert len(finals) == 5
    reader = NodeCache(root, limit_gb=100)
    for path in finals:
        data = path.read_bytes()
        assert len(data) == size and data == data[:1] * size  # one write, whole
        assert reader.get(f"s3://b/p/{path.name}", size) == data
    assert reader.get("s3://b/p/0.bin", size - 1) is None  # not the listed size: read again


def test_the_cache_keeps_to_its_limit(tmp_path):
    cache = NodeCache(tmp_path, limit_gb=2500 / 1e9)  # room for two 1000-byte objects
    kept = [cache.put(f"gs://b/{i}.png", bytes(1000)) for i in range(4)]
    assert kept == [True, True, False, False]
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == ["0.png", "1.png"]
    # another process on the node sees what is on disk already
    assert not NodeCache(tmp_path, limit_gb=2500 / 1e9).put("gs://b/9.png", bytes(1000))
    assert NodeCache(tmp_path, limit_gb=3500 / 1e9).put("gs://b/9.png", bytes(1000))
    copied = pickle.loads(pickle.dumps(cache))  # as a spawned loader process gets it
    assert copied.get("gs://b/0.png") == bytes(1000)
    assert not copied.put("gs://b/8.png", bytes(600))  # 2000 known + 600 > 2500


def test_missing_buckets_or_objects_and_refused_credentials_stop_before_ray_naming_the_uri(
    s3, dataset, tmp_path, capsys, monkeypatch
):
    uri = _upload(dataset, "checked", s3)
    _delete(s3, "checked/val/" + sorted(p.name for p in dataset.val_images.iterdir())[0])
    config = _config(dataset, tmp_path, uri, s3)
    with pytest.raises(DataError, match=f"1 of 4 images in {uri}/annotations/val.json are missing"):
        prepare_run(config)
    nowhere = _config(dataset, tmp_path, "s3://no-such-bucket/shapes", s3)
    with pytest.raises(
        DataError,
        match="annotation file s3://no-such-bucket/shapes/annotations/train.json does not exist",
    ):
        prepare_run(nowhere)

    # detr-ray data check lists the prefix once and reports what is missing
    argv = ["data", "check", f"{uri}/annotations/val.json", f"{uri}/val", "--endpoint", s3]
    assert cli_main(argv) == 1
    out = capsys.readouterr().out
    assert "missing          1:" in out and "would stop training" in out
    assert "not compared with the annotations here" in out
    argv = ["data", "check", f"{uri}/annotations/train.json", f"{uri}/train", "--endpoint", s3]
    assert cli_main(argv) == 0
    assert "ready to train" in capsys.readouterr().out

    # credentials the server refuses (moto's own IAM checks on: no user has this key)
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with pytest.raises(DataError) as refused:
        prepare_run(_config(dataset, tmp_path, uri, s3))
    message = str(refused.value)
    assert message.startswith(f"annotation file {uri}/annotations/train.json cannot be read")
    assert "ACCESS_DENIED" in message and "credentials" in message and "\n" not in message
