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
from detr_ray.errors import DataError
from detr_ray.evaluation.coco_eval import (
    COCO_METRICS,
    evaluate,
    evaluate_results_file,
    to_coco_results,
)
from detr_ray.evaluation.distributed import gather_image_results

from tests.support.gloo import exit_without_teardown


@pytest.fixture(scope="module")
def shapes(make_shapes):
    data = make_shapes(num_train=1, num_val=30, size=96, seed=5)
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
    assert not any(key.startswith("agnostic/") for key in metrics)  # only when asked
    # the classes ignored, every box is right
    metrics, summary = evaluate(
        coco, _gt_as_results(coco, lambda c: c % 3 + 1), class_agnostic=True
    )
    assert metrics["AP"] == 0.0
    assert metrics["agnostic/AP"] == pytest.approx(1.0)
    assert metrics["agnostic/AR100"] == pytest.approx(1.0)
    assert "Classes ignored" in summary


def test_class_agnostic_ap_of_a_worked_example(tmp_path, capsys):
    # One image, a cat at the left and a dog at the right; two detections, exactly
    # on the boxes, both called "dog": the cat's (score 0.9) and the dog's (0.8).
    # By hand, at every IoU threshold: class cat has no detection: AP 0; class
    # dog ranks a false positive (0.9) before its true one (0.8): precision 1/2
    # at recall 1, so COCO's interpolated precision is 1/2 at every recall point:
    # AP 0.5; the mean over the two classes: 0.25. Classes ignored, both
    # detections are true positives in score order: AP 1.
    cat, dog = [10, 10, 30, 30], [60, 10, 30, 30]  # x, y, w, h: small (900 px^2 < 32^2)
    ground_truth = {
        "images": [{"id": 1, "width": 100, "height": 60, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": i + 1, "bbox": box, "area": 900,
             "iscrowd": 0}
            for i, box in enumerate([cat, dog])
        ],
    }  # fmt: skip
    results = [
        {"image_id": 1, "category_id": 2, "bbox": cat, "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": dog, "score": 0.8},
    ]
    for backend in ("pycocotools", "faster-coco-eval"):
        metrics, _ = evaluate(
            coco_from_dict(ground_truth), results, backend=backend, class_agnostic=True
        )
        assert metrics["AP/1_cat"] == 0.0 and metrics["AP/2_dog"] == pytest.approx(0.5)
        assert metrics["AP"] == pytest.approx(0.25) and metrics["AP50"] == pytest.approx(0.25)
        assert metrics["agnostic/AP"] == pytest.approx(1.0)
        assert metrics["agnostic/AP50"] == pytest.approx(1.0)
        assert metrics["agnostic/APs"] == pytest.approx(1.0) and math.isnan(
            metrics["agnostic/APm"]
        )  # no medium object: undefined
    # the same through the command line, as JSON
    (tmp_path / "gt.json").write_text(json.dumps(ground_truth))
    (tmp_path / "results.json").write_text(json.dumps(results))
    argv = ["eval", "--ann", str(tmp_path / "gt.json"), "--results", str(tmp_path / "results.json")]
    assert cli_main([*argv, "--class-agnostic", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["AP50"] == pytest.approx(0.25) and printed["agnostic/AP50"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval"])
def test_metrics_equal_cocoeval_run_directly(shapes, backend):
    _, coco = shapes
    results = _noisy_results(coco)
    metrics, summary = evaluate(coco, results, backend=backend)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        direct = COCOeval(coco, coco.loadRes(results), "bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    assert list(metrics)[:12] == list(COCO_METRICS)
    for name, value in zip(COCO_METRICS, direct.stats):
        expected = math.nan if value < 0 else value
        assert metrics[name] == pytest.approx(expected, nan_ok=True), name
    assert 0.05 < metrics["AP"] < 0.95  # the noise makes it a non-trivial case
    # the summary table reads as COCOeval prints it
    assert summary.splitlines() == [
        line for line in printed.getvalue().splitlines() if line.startswith(" Average")
    ]
    # per-class AP equals COCOeval restricted to that category
    for category in coco.dataset["categories"]:
        with contextlib.redirect_stdout(io.StringIO()):
            one = COCOeval(coco, coco.loadRes(results), "bbox")
            one.params.catIds = [category["id"]]
            one.evaluate()
            one.accumulate()
            one.summarize()
        assert metrics[f"AP/{category['id']}_{category['name']}"] == pytest.approx(one.stats[0])


def _crowded_set(num_images=120, max_objects=30, detections=120, num_classes=7, seed=0):
    """Ground truth with every COCOeval case (crowd regions, empty images, the
    three area ranges, a class with no objects) and more detections per image
    than maxDets keeps, some near the objects and some anywhere."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 320, "height": 240} for i in range(num_images)]
    categories = [{"id": 3 * c + 1, "name": f"class{c}"} for c in range(num_classes)]
    annotations, results = [], []
    for image in images:
        objects = 0 if image["id"] % 10 == 0 else int(rng.integers(1, max_objects))
        for _ in range(objects):
            w, h = rng.uniform(3, 150, 2)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": 3 * int(rng.integers(0, num_classes - 1)) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
        own = [a for a in annotations if a["image_id"] == image["id"]]
        for _ in range(detections):
            if own and rng.random() < 0.6:
                a = own[int(rng.integers(len(own)))]
                x, y, w, h = np.asarray(a["bbox"]) + rng.normal(0, 4, 4)
                category = a["category_id"] if rng.random() < 0.8 else 1
            else:
                w, h = rng.uniform(3, 150, 2)
                x, y, category = rng.uniform(0, 300), rng.uniform(0, 220), 1
            box = [float(x), float(y), max(float(w), 1.0), max(float(h), 1.0)]
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": category,
                    "bbox": box,
                    "score": float(rng.random()),
                }  # fmt: skip
            )
    ground_truth = {"images": images, "categories": categories, "annotations": annotations}
    return coco_from_dict(ground_truth), results


def test_the_faster_backend_gives_every_metric_of_pycocotools():
    coco, results = _crowded_set()
    subset = list(range(1, 121, 2))
    for image_ids in (None, subset):
        reference, table = evaluate(
            coco, results, image_ids, backend="pycocotools", class_agnostic=True
        )
        faster, faster_table = evaluate(
            coco, results, image_ids, backend="faster-coco-eval", class_agnostic=True
        )
        assert faster.keys() == reference.keys()
        assert len([k for k in reference if k.startswith("AP/")]) == 7  # one without objects
        for name, value in reference.items():
            if math.isnan(value):
                assert math.isnan(faster[name]), name
            else:
                assert abs(faster[name] - value) <= 1e-9, (name, faster[name], value)
        assert 0.05 < reference["AP"] < 0.9 and not math.isnan(reference["APs"])
        assert faster_table == table


def test_an_unknown_or_missing_backend_is_named(shapes, monkeypatch):
    import sys

    from detr_ray.errors import ConfigError

    _, coco = shapes
    with pytest.raises(ConfigError, match="'fastest'"):
        evaluate(coco, _gt_as_results(coco), backend="fastest")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'detr-ray\[fast-eval\]'"):
        evaluate(coco, _gt_as_results(coco), backend="faster-coco-eval")
    metrics, _ = evaluate(coco, _gt_as_results(coco), backend="auto")  # pycocotools then
    assert metrics["AP"] == pytest.approx(1.0)


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


def test_labels_the_dataset_does_not_have_are_left_out():
    # a model with more classes than the dataset's 2 categories (model.num_classes
    # set higher) predicts label 4: no category maps to it, and it is not scored
    label_map = LabelMap((7, 9), ("cat", "dog"))
    detections = [
        {"image_id": 1, "boxes_xyxy": [[0, 0, 2, 2], [1, 1, 3, 4]], "scores": [0.9, 0.8],
         "labels": [4, 1]}
    ]  # fmt: skip
    (only,) = to_coco_results(detections, label_map)
    assert only["category_id"] == 9 and only["bbox"] == [1, 1, 2, 3]


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
        dist.barrier()  # both ranks have written their results
    except BaseException:
        dist.destroy_process_group()
        raise
    exit_without_teardown()


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
