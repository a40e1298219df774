"""``predict --cluster``: a Ray Data pipeline on the session's Ray, against
in-process ``predict`` (a second path to the same numbers).

- from a folder and from a bucket (moto's S3 API on 127.0.0.1, started and
  stopped here), every image once, with in-process predict's detections;
- a re-run skips what ``--out`` holds;
- an actor SIGKILLed by its pid mid-run: the run still ends with every
  image predicted exactly once;
- ``eval --cluster`` gives in-process evaluation's metrics (one image per
  forward pass), to 1e-9.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from detr_ray import storage
from detr_ray.batch.parts import part_files, read_records
from detr_ray.batch.pipeline import ClusterPrediction, predict_on_cluster
from detr_ray.cli import main as cli_main
from detr_ray.evaluation.predict import evaluate_checkpoint, predict_images

from tests.support.predictions import assert_same_predictions
from tests.support.servers import S3_REGION, s3_server

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def shapes(make_shapes):
    return make_shapes(num_train=2, num_val=40, size=64, seed=8)


@pytest.fixture(scope="module")
def images(shapes):
    return shapes.val_images


@pytest.fixture(scope="module")
def in_process(tiny_checkpoint, images, tmp_path_factory) -> dict[str, dict]:
    """``predict``'s records without ``--cluster``, by file name."""
    out = tmp_path_factory.mktemp("in-process")
    json_path, count = predict_images(tiny_checkpoint[0], [images], out, score_threshold=0.05)
    assert count == 40
    return {Path(r["file"]).name: r for r in json.loads(json_path.read_text())}


def test_a_folder_and_a_bucket_give_in_process_predictions_and_reruns_skip_them(
    tiny_checkpoint, images, in_process, tmp_path, capsys
):
    out = tmp_path / "folder-out"
    argv = ["predict", "--cluster", "--checkpoint", str(tiny_checkpoint[0]), str(images)]
    argv += ["--out", str(out), "--threshold", "0.05", "--batch-size", "4", "--part-size", "16"]
    assert cli_main(argv) == 0
    assert "predicted 40 image(s)" in capsys.readouterr().out
    assert_same_predictions(list(read_records(str(out))), in_process)
    assert len(part_files(str(out))) == 3  # 16 + 16 + 8 lines
    assert cli_main(argv) == 0  # a re-run: nothing left to do
    again = capsys.readouterr().out
    assert "predicted 0 image(s)" in again and "(40 done before, skipped)" in again
    assert len(list(read_records(str(out)))) == 40

    with s3_server("preds") as endpoint:
        options = storage.StorageOptions(endpoint, S3_REGION)
        for path in sorted(images.iterdir()):
            storage.write_bytes(f"s3://preds/val/{path.name}", path.read_bytes(), options)
        settings = ClusterPrediction(score_threshold=0.05, batch_size=4, part_size=25)
        written, skipped = predict_on_cluster(
            tiny_checkpoint[0], ["s3://preds/val/"], "s3://preds/out", settings, options
        )
        assert (written, skipped) == (40, 0)
        records = list(read_records("s3://preds/out", options))
    assert all(r["file"].startswith("s3://preds/val/") for r in records)
    assert_same_predictions(records, in_process)


def test_an_actor_killed_mid_run_leaves_every_image_predicted_once(
    tiny_checkpoint, images, in_process, tmp_path
):
    import ray
    from ray.util.state import list_actors

    out = tmp_path / "out"
    settings = ClusterPrediction(score_threshold=0.05, batch_size=1, max_actors=1, part_size=2)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["counts"] = predict_on_cluster(
                tiny_checkpoint[0], [str(images)], str(out), settings
            )
        except BaseException as e:  # noqa: BLE001 (the test's thread reports any failure)
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while not (out.is_dir() and part_files(str(out))):  # the actor is at work
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.2)
    actors = [
        a
        # this session's Ray, by its address: other Rays may run on the machine
        for a in list_actors(
            address=ray.get_runtime_context().gcs_address,
            filters=[("state", "=", "ALIVE")],
            detail=True,
        )
        if "Detect" in a.class_name
    ]
    assert len(actors) == 1, [a.class_name for a in actors]
    os.kill(actors[0].pid, signal.SIGKILL)
    assert len(list(read_records(str(out)))) < 40  # killed mid-run
    thread.join(600)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["counts"] == (40, 0)
    assert_same_predictions(list(read_records(str(out))), in_process)


def test_eval_on_the_cluster_gives_the_in_process_metrics(tiny_checkpoint, shapes, capsys):
    checkpoint = str(tiny_checkpoint[0])
    expected, _ = evaluate_checkpoint(
        checkpoint, shapes.val_ann, shapes.val_images, batch_size=1, class_agnostic=True
    )
    assert "agnostic/AP50" in expected
    argv = ["eval", "--cluster", "--checkpoint", checkpoint, "--ann", str(shapes.val_ann)]
    argv += ["--images", str(shapes.val_images), "--batch-size", "4", "--json"]
    argv += ["--class-agnostic"]
    assert cli_main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got.keys() == expected.keys()
    assert not math.isnan(expected["AR100"])  # some detection scored
    for name, value in expected.items():
        assert (got[name] is None) == math.isnan(value), name
        if got[name] is not None:
            assert got[name] == pytest.approx(value, abs=1e-9), name
