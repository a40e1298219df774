"""What each stage of a batch prediction does to its rows; plain torch, no Ray.

Rows are dicts of columns, as Ray Data hands them:

1. :func:`decode_and_resize` (a CPU task per row): ``{path, bytes}`` ->
   ``{path, width, height, image}``, ``image`` the model's input ``(3, H, W)``
   float32 after the checkpoint's evaluation transform;
2. :class:`Detect` (an actor per device, a batch of rows at a time):
   ``{path, width, height, image}`` -> ``{path, width, height, detections}``,
   ``detections`` a JSON list as ``predict`` writes it, or (``coco_results``)
   as COCO results with ``image_id`` 0, unrounded, for evaluation.

Together they compute what :func:`detr_ray.evaluation.detect.detections_of`
computes for one image (each image runs alone through the model: the same
numbers as ``predict`` without ``--cluster``, whatever the batch).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from detr_ray.checkpoint.models import LoadedModel
from detr_ray.data.collate import PadCollate
from detr_ray.data.images import decode_rgb
from detr_ray.data.transforms import build_transforms
from detr_ray.evaluation.coco_eval import to_coco_results
from detr_ray.evaluation.detect import describe_detections, detect_batch


def decode_and_resize(row: dict, loaded: LoadedModel) -> dict:
    """One image's bytes -> its model input (see the module docstring)."""
    image = decode_rgb(row["bytes"])
    transform = build_transforms(loaded.augmentation, train=False)
    tensor, _ = transform(image, _empty_target(image.height, image.width))
    return {
        "path": row["path"],
        "width": image.width,
        "height": image.height,
        "image": tensor.numpy().astype(np.float32, copy=False),
    }


class Detect:
    """The model on one device; called with a batch of rows (column -> values)."""

    def __init__(
        self,
        loaded: LoadedModel,
        score_threshold: float,
        device: str = "cpu",
        top_k: int | None = None,
        coco_results: bool = False,
    ):
        self.loaded = loaded
        self.loaded.model.to(device).eval()
        self.device = torch.device(device)
        self.score_threshold = score_threshold
        self.top_k = top_k
        self.coco_results = coco_results
        self.collate = PadCollate()

    def __call__(self, batch: dict) -> dict:
        found = []
        for image, width, height in zip(batch["image"], batch["width"], batch["height"]):
            target = _empty_target(int(height), int(width))
            model_input = self.collate([(torch.as_tensor(np.asarray(image)), target)])
            assert model_input is not None
            detections = detect_batch(
                self.loaded.model,
                model_input.to(self.device),
                top_k=self.top_k,
                score_threshold=self.score_threshold,
            )
            if self.coco_results:
                entries = to_coco_results(detections, self.loaded.label_map)
            else:
                entries = describe_detections(detections[0], self.loaded.label_map)
            found.append(json.dumps(entries))
        return {
            "path": list(batch["path"]),
            "width": list(batch["width"]),
            "height": list(batch["height"]),
            "detections": found,
        }


def _empty_target(height: int, width: int) -> dict:
    return {
        "image_id": 0,
        "boxes_xyxy": torch.zeros(0, 4),
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "orig_size": (height, width),
    }
