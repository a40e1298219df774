import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.cocoeval import COCOeval

from detr_ray.cli import main as cli_main
from detr_ray.data.annotations import coco_from_dict, load_coco_json
from detr_ray.data.labels import LabelMap
from detr_ray.data.synthetic import generate
from detr_ray.errors import DataError
from detr_ray.evaluation import (
    COCO_METRICS,
    evaluate,
    evaluate_results_file,
    gather_image_results,
    to_coco_results,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    data = generate(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=30, size=96, seed=5)
    return data, coco_from_dict(load_coco_json(data.val_ann))


def _gt_as_results(coco, category_of=lambda c: c):
    return [
        {
            "image_id": a["image_id"],
            "category_id": category_of(a["category_id"]),
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in coco.dataset["annotations"]
    ]


def _noisy_results(coco, seed=0):
    rng = np.random.default_rng(seed)
    results = []
    for a in coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                "score": float(rng.random()),
            }
        )
    for image_id in list(coco.imgs)[:10]:  # false positives
        results.append(
            {
                "image_id": image_id,
                "category_id": 2,
                "bbox": [5, 5, 20, 20],
                "score": float(rng.random()),
            }
        )
    return results


def test_ground_truth_as_predictions_scores_one(shapes):
    _, coco = shapes
    metrics, _ = evaluate(coco, _gt_as_results(coco))
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[name] == pytest.approx(1.0)
    for name in ("AP/1_circle", "AP/2_rectangle", "AP/3_triangle"):
        assert metrics[name] == pytest.approx(1.0)


def test_wrong_labels_score_zero(shapes):
    _, coco = shapes
    metrics, _ = evaluate(coco, _gt_as_results(coco, lambda c: c % 3 + 1))  # every label wrong
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0


def test_metrics_equal_cocoeval_run_directly(shapes):
    _, coco = shapes
    results = _noisy_results(coco)
    metrics, summary = evaluate(coco, results)
    with contextlib.redirect_stdout(io.StringIO()):
        direct = COCOeval(coco, coco.loadRes(results), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert list(metrics)[:12] == list(COCO_METRICS)
    for name, value in zip(COCO_METRICS, direct.stats):
        expected = math.nan if value < 0 else value
        assert metrics[name] == pytest.approx(expected, nan_ok=True), name
    assert 0.05 < metrics["AP"] < 0.95  # the noise makes it a non-trivial case
    assert "Average Precision" in summary
    # per-class AP equals COCOeval restricted to that category
    for category in coco.dataset["categories"]:
        with contextlib.redirect_stdout(io.StringIO()):
            one = COCOeval(coco, coco.loadRes(results), "bbox")
            one.params.catIds = [category["id"]]
            one.evaluate()
            one.accumulate()
            one.summarize()
        assert metrics[f"AP/{category['id']}_{category['name']}"] == pytest.approx(one.stats[0])


def test_a_subset_of_images(shapes):
    _, coco = shapes
    subset = sorted(coco.imgs)[:8]
    results = [r for r in _noisy_results(coco, seed=1) if r["image_id"] in subset]
    metrics, _ = evaluate(coco, results, image_ids=subset)
    with contextlib.redirect_stdout(io.StringIO()):
        direct = COCOeval(coco, coco.loadRes(results), "bbox")
        direct.params.imgIds = subset
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert metrics["AP"] == pytest.approx(direct.stats[0])


def test_no_detections_score_zero(shapes):
    _, coco = shapes
    metrics, _ = evaluate(coco, [])
    assert metrics["AP"] == 0.0 and metrics["AR100"] == 0.0


def test_detections_map_back_to_category_ids_and_xywh():
    label_map = LabelMap((3, 7), ("cat", "dog"))
    results = to_coco_results(
        [{"image_id": 4, "boxes_xyxy": [[10, 20, 30, 60]], "scores": [0.9], "labels": [1]}],
        label_map,
    )
    assert results == [{"image_id": 4, "category_id": 7, "bbox": [10, 20, 20, 40], "score": 0.9}]


def test_results_file_problems_are_named(shapes, tmp_path):
    data, coco = shapes
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])
    )
    with pytest.raises(DataError, match="bad.json: detection 0 is for image_id 999"):
        evaluate_results_file(data.val_ann, bad)
    bad.write_text("[{")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        evaluate_results_file(data.val_ann, bad)


def test_cli_scores_a_results_file_as_json(shapes, tmp_path, capsys):
    data, coco = shapes
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(_noisy_results(coco)))
    assert (
        cli_main(["eval", "--ann", str(data.val_ann), "--results", str(results_file), "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    expected, _ = evaluate(coco, _noisy_results(coco))
    assert printed["AP"] == pytest.approx(expected["AP"])
    assert set(printed) == set(expected)


def _gather_worker(rank, init_file, shards, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        merged = gather_image_results(shards[rank])
        with open(os.path.join(out_dir, f"gathered{rank}.json"), "w") as f:
            json.dump(None if merged is None else [merged.results, merged.image_ids], f)
        # Both ranks meet before teardown: a rank that destroys its gloo group
        # while the other still talks to it aborts the process (SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_gather_deduplicates_padded_images(shapes, tmp_path):
    _, coco = shapes
    results = _noisy_results(coco)
    per_image = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append(r)
    image_ids = sorted(coco.imgs)
    # rank 1 repeats rank 0's first image, as a padded DistributedSampler does
    shards = [
        [(i, per_image.get(i, [])) for i in image_ids[0::2]],
        [(i, per_image.get(i, [])) for i in image_ids[1::2] + image_ids[:1]],
    ]
    mp.start_processes(
        _gather_worker,
        args=(str(tmp_path / "init"), shards, str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    gathered, gathered_ids = json.loads((tmp_path / "gathered0.json").read_text())
    assert json.loads((tmp_path / "gathered1.json").read_text()) is None
    # every image once, in the order the ranks ran them
    assert gathered_ids == image_ids[0::2] + image_ids[1::2]
    assert sorted(json.dumps(r, sort_keys=True) for r in gathered) == sorted(
        json.dumps(r, sort_keys=True) for r in results
    )
    assert evaluate(coco, gathered)[0]["AP"] == pytest.approx(evaluate(coco, results)[0]["AP"])
