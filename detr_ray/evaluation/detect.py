"""A trained model's detections: on a padded batch, on one image, described and drawn.

Single-process and Ray-free; the training loop's evaluation, ``detr-ray
predict`` and the served MLflow model all detect through :func:`detect_batch`.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from detr_ray.checkpoint import LoadedModel
from detr_ray.data.collate import Batch, PadCollate
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms
from detr_ray.errors import ConfigError
from detr_ray.model.postprocess import SIGMOID_TOP_K, postprocess, postprocess_sigmoid

BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


@torch.no_grad()
def detect_batch(model, batch: Batch, top_k: int | None = 100, score_threshold: float = 0.0):
    """Detections of a padded batch in original-image pixels, from the last
    decoder layer: DETR's best class per query (:func:`postprocess`; ``top_k``
    ``None``: every query), or Deformable DETR's best (query, class) pairs
    (:func:`postprocess_sigmoid`; ``top_k`` ``None``: the official 100).

    Returns one dict per image with ``image_id`` added.
    """
    device = next(model.parameters()).device
    outputs = model(*batch.to(device).inputs())
    cls_scores, bbox_preds = outputs[0][-1], outputs[1][-1]  # the last layer's
    orig_sizes = torch.tensor([m.orig_size for m in batch.metas], device=device)
    if model.sigmoid_classes:
        detections = postprocess_sigmoid(
            cls_scores, bbox_preds, orig_sizes, top_k or SIGMOID_TOP_K, score_threshold
        )
    else:
        detections = postprocess(cls_scores, bbox_preds, orig_sizes, top_k, score_threshold)
    return [{**det, "image_id": meta.image_id} for det, meta in zip(detections, batch.metas)]


def resolve_device(name: str | None) -> torch.device:
    """``--device``: ``cuda`` when available, else ``cpu``; a named one must exist."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA GPU; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return device


def detections_of(
    loaded: LoadedModel, image: Image.Image, score_threshold: float, transform=None
) -> list[dict]:
    """One RGB image's detections above ``score_threshold``, as :func:`describe_detections`
    writes them (what ``predict`` and the served MLflow model both return)."""
    transform = transform or build_transforms(loaded.augmentation, train=False)
    target = {
        "image_id": 0,
        "boxes_xyxy": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "orig_size": (image.height, image.width),
    }
    batch = PadCollate()([transform(image, target)])
    assert batch is not None  # one readable image makes a batch
    detections = detect_batch(loaded.model, batch, top_k=None, score_threshold=score_threshold)
    return describe_detections(detections[0], loaded.label_map)


def describe_detections(detections: dict, label_map: LabelMap) -> list[dict]:
    entries = []
    for score, label, box in zip(
        detections["scores"].tolist(),
        detections["labels"].tolist(),
        detections["boxes_xyxy"].tolist(),
    ):
        entries.append(
            {
                "label": label,
                "category_id": label_map.category_id(label),
                "name": label_map.name(label),
                "score": round(score, 4),
                "box_xyxy": [round(v, 2) for v in box],
            }
        )
    return entries


def draw_detections(image: Image.Image, entries: list[dict]) -> Image.Image:
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    for entry in entries:
        colour = BOX_COLOURS[entry["label"] % len(BOX_COLOURS)]
        x1, y1, x2, y2 = entry["box_xyxy"]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        caption = f"{entry['name']} {entry['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption)
        draw.rectangle((left, top, right + 2, bottom), fill=colour)
        draw.text((x1 + 1, y1), caption, fill=(255, 255, 255))
    return canvas
