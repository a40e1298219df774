"""Running a trained model: predictions drawn on images, and COCO evaluation.

Single-process and Ray-free: what ``detr-ray predict`` and ``detr-ray eval
--checkpoint`` run. The training loop evaluates with :func:`detect_batch` too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from detr_ray.checkpoint import LoadedModel, load_model
from detr_ray.data.coco import CocoDetection
from detr_ray.data.collate import Batch, PadCollate
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms
from detr_ray.errors import DataError
from detr_ray.evaluation import evaluate, to_coco_results
from detr_ray.model.postprocess import postprocess

BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))


@torch.no_grad()
def detect_batch(model, batch: Batch, top_k: int | None = 100, score_threshold: float = 0.0):
    """Detections of a padded batch in original-image pixels (see :func:`postprocess`).

    Returns one dict per image with ``image_id`` added.
    """
    device = next(model.parameters()).device
    cls_scores, bbox_preds = model(*batch.to(device).inputs())
    orig_sizes = torch.tensor([m.orig_size for m in batch.metas], device=device)
    detections = postprocess(cls_scores[-1], bbox_preds[-1], orig_sizes, top_k, score_threshold)
    return [{**det, "image_id": meta.image_id} for det, meta in zip(detections, batch.metas)]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    batch_size: int,
    num_workers: int = 0,
) -> tuple[dict[str, float], str]:
    """COCO box metrics of a checkpoint on a dataset (see :func:`detr_ray.evaluation.evaluate`)."""
    loaded = load_model(checkpoint)
    dataset = CocoDetection(
        ann_file,
        image_dir,
        build_transforms(loaded.augmentation, train=False),
        label_map=loaded.label_map,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=PadCollate()
    )
    results = []
    for batch in loader:
        if batch is not None:
            results += to_coco_results(detect_batch(loaded.model, batch), loaded.label_map)
    return evaluate(dataset.coco, results, image_ids=dataset.image_ids)


def predict_images(
    checkpoint: str | os.PathLike,
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    score_threshold: float,
) -> Path:
    """Draw each image's detections into ``out_dir/<name>.png`` and write them
    all to ``out_dir/detections.json``; returns the JSON's path."""
    loaded = load_model(checkpoint)
    transform = build_transforms(loaded.augmentation, train=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, path in enumerate(image_paths):
        image = _open_image(Path(path))
        target = {
            "image_id": index,
            "boxes_xyxy": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "orig_size": (image.height, image.width),
        }
        batch = PadCollate()([transform(image, target)])
        assert batch is not None  # one readable image makes a batch
        detections = detect_batch(loaded.model, batch, top_k=None, score_threshold=score_threshold)
        entries = describe_detections(detections[0], loaded.label_map)

        draw_detections(image, entries).save(out_dir / f"{Path(path).stem}.png")
        records.append(
            {"file": str(path), "width": image.width, "height": image.height, "detections": entries}
        )
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(records, indent=2))
    return json_path


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


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


__all__ = [
    "LoadedModel",
    "describe_detections",
    "detect_batch",
    "draw_detections",
    "evaluate_checkpoint",
    "predict_images",
]
