"""COCO box evaluation through pycocotools' COCOeval (or its faster drop-in).

Detections come in as one dict per image: ``image_id``, ``boxes_xyxy``
``(N, 4)`` absolute pixels in the *original* image, ``scores (N,)`` and
``labels (N,)`` contiguous labels. They become COCO results (category ids
mapped back, ``[x, y, w, h]`` boxes), and COCOeval scores them.

The metric dict holds COCOeval's 12 numbers under ``AP AP50 AP75 APs APm APl
AR1 AR10 AR100 ARs ARm ARl`` (in [0, 1]; NaN where COCOeval prints -1, i.e.
no ground truth in that area range) and per-class AP under
``AP/<category id>_<name>`` (the name made safe for MLflow; the id keeps two
categories apart whose names differ only in characters MLflow refuses).

In distributed evaluation each worker scores its shard; the per-image results
are gathered to rank 0 (``torch.distributed``), duplicates that a padded
distributed sampler produces are dropped, and rank 0 runs COCOeval once.

Backends (``train.eval_backend``, ``detr-ray eval --eval-backend``):
``pycocotools``; ``faster-coco-eval`` (the ``faster-coco-eval`` package's
C++ ``COCOeval_faster``, several times faster on large sets, the same
metrics to 1e-9, per-class AP included: ``tests/test_evaluation.py``); and
``auto`` (the default): the faster one when it is installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_ray.config import TrainConfig
from detr_ray.data.annotations import coco_from_dict, load_coco_json
from detr_ray.data.ground_truth import clean_ground_truth
from detr_ray.data.labels import LabelMap
from detr_ray.errors import ConfigError, DataError
from detr_ray.schema import choices_of

COCO_METRICS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def to_coco_results(detections: Iterable[Mapping], label_map: LabelMap) -> list[dict]:
    """Per-image detections -> COCO result dicts (``bbox`` as ``[x, y, w, h]``).

    Labels past the label map (a model with more classes than the dataset
    has categories, ``model.num_classes`` set higher) are left out: no
    category of the ground truth has them, so COCOeval would not score them.
    """
    results = []
    for det in detections:
        boxes = np.asarray(det["boxes_xyxy"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(det["labels"]).reshape(-1)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            if label >= label_map.num_classes:
                continue
            results.append(
                {
                    "image_id": int(det["image_id"]),
                    "category_id": label_map.category_id(int(label)),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return results


EVAL_BACKENDS = choices_of(TrainConfig, "eval_backend")  # auto, pycocotools, faster-coco-eval


def cocoeval_class(backend: str = "auto") -> type:
    """The COCOeval class of ``backend`` (one of :data:`EVAL_BACKENDS`)."""
    if backend not in EVAL_BACKENDS:
        raise ConfigError(f"evaluation backend {backend!r}: expected one of {EVAL_BACKENDS}")
    if backend != "pycocotools":
        try:
            from faster_coco_eval import COCOeval_faster
        except ImportError:
            if backend == "faster-coco-eval":
                raise ConfigError(
                    "evaluation backend 'faster-coco-eval' is not installed: "
                    "pip install 'detr-ray[fast-eval]' (or use 'pycocotools')"
                ) from None
        else:
            return COCOeval_faster
    return COCOeval


def evaluate(
    coco_gt: COCO,
    results: Sequence[Mapping],
    image_ids: Iterable[int] | None = None,
    backend: str = "auto",
    class_agnostic: bool = False,
) -> tuple[dict[str, float], str]:
    """Score COCO box results against ground truth.

    Args:
        coco_gt: the ground truth.
        results: COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``).
        image_ids: evaluate only these images (default: every image in ``coco_gt``).
        backend: one of :data:`EVAL_BACKENDS` (see the module docstring).
        class_agnostic: also score the boxes with the classes ignored (COCOeval's
            ``useCats=0``: a detection may match an object of any class), under
            ``agnostic/AP``, ``agnostic/AP50``, ... and a second summary table.
            Near-zero AP beside a clearly higher agnostic AP says the model finds
            the objects but names them wrongly; both near zero, that it finds none.

    Returns:
        ``(metrics, summary)``: the metric dict described in the module
        docstring, and the summary table in COCOeval's layout.
    """
    _check_results(coco_gt, results)
    coco_dt = _load_results(coco_gt, results)
    evaluator_class = cocoeval_class(backend)
    evaluator = _scored(evaluator_class, coco_gt, coco_dt, image_ids, use_categories=True)
    metrics = {name: _undefined_to_nan(v) for name, v in zip(COCO_METRICS, evaluator.stats)}
    label_map = LabelMap.from_categories(coco_gt.dataset["categories"])
    precision = evaluator.eval["precision"]  # (IoU thresholds, recall, K, area, max dets)
    for k, category_id in enumerate(evaluator.params.catIds):
        per_class = precision[:, :, k, 0, -1]  # area "all", 100 detections
        defined = per_class[per_class > -1]
        label = label_map.label_of(category_id)
        value = float(defined.mean()) if defined.size else math.nan
        metrics[f"AP/{category_id}_{label_map.metric_name(label)}"] = value
    summary = _summary_table(evaluator.stats)
    if class_agnostic:
        agnostic = _scored(evaluator_class, coco_gt, coco_dt, image_ids, use_categories=False)
        for name, value in zip(COCO_METRICS, agnostic.stats):
            metrics[f"agnostic/{name}"] = _undefined_to_nan(value)
        summary += (
            "\nClasses ignored (a detection may match an object of any class):\n"
            + _summary_table(agnostic.stats)
        )
    return metrics, summary


def _scored(evaluator_class: type, coco_gt: COCO, coco_dt: COCO, image_ids, use_categories: bool):
    """A COCOeval (of ``evaluator_class``) that has evaluated, accumulated and
    summarised, quietly; ``use_categories=False`` ignores the classes."""
    # faster-coco-eval reports through logging, not stdout: keep it quiet too
    quiet = {} if evaluator_class is COCOeval else {"print_function": lambda *_, **__: None}
    evaluator = evaluator_class(coco_gt, coco_dt, iouType="bbox", **quiet)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(set(int(i) for i in image_ids))
    evaluator.params.useCats = int(use_categories)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def evaluate_results_file(
    ann_file: str | os.PathLike,
    results_file: str | os.PathLike,
    backend: str = "auto",
    raw_ground_truth: bool = False,
    class_agnostic: bool = False,
) -> tuple[dict[str, float], str]:
    """Score an existing COCO results JSON (a list of result dicts) against the
    annotation file's cleaned ground truth (:mod:`detr_ray.data.ground_truth`),
    or with ``raw_ground_truth`` against the file as it is. The summary's first
    line says which, and what cleaning changed."""
    data = load_coco_json(ann_file)
    if raw_ground_truth:
        coco_gt = coco_from_dict(data)
        note = f"Evaluation scored against {ann_file} as it is (--raw-ground-truth)"
    else:
        cleaned = clean_ground_truth(data)
        coco_gt = coco_from_dict(cleaned.coco_dict(data))
        note = (
            f"Evaluation scored against the cleaned ground truth of {ann_file}, as training "
            f"uses it: {cleaned.note()} (--raw-ground-truth: the file as it is)"
        )
    path = Path(results_file)
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"results file {path} is not valid JSON: {e.msg} (line {e.lineno})"
        ) from None
    if not isinstance(results, list):
        raise DataError(f"results file {path} must hold a JSON list of detections")
    try:
        metrics, summary = evaluate(
            coco_gt, results, backend=backend, class_agnostic=class_agnostic
        )
    except DataError as e:
        raise DataError(f"results file {path}: {e}") from None
    return metrics, f"{note}\n{summary}"


def format_metrics(metrics: Mapping[str, float]) -> str:
    """A two-column table of the metrics, COCO's 12 first, then per class."""
    lines = []
    for name, value in metrics.items():
        shown = "  n/a" if value is None or math.isnan(value) else f"{value:.3f}"
        lines.append(f"  {name:<28} {shown}")
    return "\n".join(lines)


def _check_results(coco_gt: COCO, results: Sequence[Mapping]) -> None:
    known_images, known_categories = set(coco_gt.imgs), set(coco_gt.cats)
    for index, result in enumerate(results):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in result:
                raise DataError(f"detection {index} has no '{key}'")
        if result["image_id"] not in known_images:
            raise DataError(
                f"detection {index} is for image_id {result['image_id']}, "
                "which the annotation file does not have"
            )
        if result["category_id"] not in known_categories:
            raise DataError(
                f"detection {index} has category_id {result['category_id']}, "
                "which the annotation file does not have"
            )


def _load_results(coco_gt: COCO, results: Sequence[Mapping]) -> COCO:
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(r) for r in results])
    # pycocotools cannot load an empty result list; an empty detection set scores 0.
    return coco_from_dict(
        {
            "images": coco_gt.dataset["images"],
            "categories": coco_gt.dataset["categories"],
            "annotations": [],
        }
    )


def _undefined_to_nan(value: float) -> float:
    return math.nan if value < 0 else float(value)


# (kind, IoU range, area, maxDets) of COCOeval's 12 numbers, in order
_SUMMARY_ROWS = (
    *(("Precision", "AP", iou, "all", 100) for iou in ("0.50:0.95", "0.50", "0.75")),
    *(("Precision", "AP", "0.50:0.95", area, 100) for area in ("small", "medium", "large")),
    *(("Recall", "AR", "0.50:0.95", "all", dets) for dets in (1, 10, 100)),
    *(("Recall", "AR", "0.50:0.95", area, 100) for area in ("small", "medium", "large")),
)


def _summary_table(stats: Sequence[float]) -> str:
    """The 12 numbers as COCOeval's ``summarize`` prints them (-1: undefined)."""
    return "\n".join(
        f" Average {kind:<10} ({short}) @[ IoU={iou:<9} | area={area:>6s} | "
        f"maxDets={dets:>3d} ] = {value:0.3f}"
        for (kind, short, iou, area, dets), value in zip(_SUMMARY_ROWS, stats)
    )
