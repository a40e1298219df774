"""Running a trained model: predictions drawn on images, and COCO evaluation.

Single-process and Ray-free: what ``detr-ray predict`` and ``detr-ray eval
--checkpoint`` run. The training loop evaluates with :func:`detect_batch` too.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from detr_ray.checkpoint import LoadedModel, load_model
from detr_ray.data.coco import CocoDetection
from detr_ray.data.collate import Batch, PadCollate
from detr_ray.data.images import ImageReadError, open_rgb, read_sizes
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms
from detr_ray.errors import ConfigError, DataError
from detr_ray.evaluation.coco_eval import evaluate, to_coco_results
from detr_ray.model.postprocess import postprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
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


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    ann_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    on_bad_image: str = "error",
    num_workers: int = 0,
    eval_backend: str = "auto",
) -> tuple[dict[str, float], str]:
    """COCO box metrics of a checkpoint on a dataset (see
    :func:`detr_ray.evaluation.coco_eval.evaluate`).

    The summary says what was scored: the dataset's cleaned ground truth over
    the images that were run (see :class:`~detr_ray.data.coco.CocoDetection`).
    """
    loaded = load_model(checkpoint, device=device)
    dataset = CocoDetection(
        ann_file,
        image_dir,
        build_transforms(loaded.augmentation, train=False),
        label_map=loaded.label_map,
        on_bad_image=on_bad_image,
        bad_image_hint="pass --on-bad-image skip",
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=PadCollate()
    )
    progress = RateLine("eval", len(dataset))
    results, image_ids = [], []
    for batch in loader:
        if batch is not None:
            results += to_coco_results(detect_batch(loaded.model, batch), loaded.label_map)
            image_ids += [meta.image_id for meta in batch.metas]
        progress.advance(batch_size)
    metrics, summary = evaluate(dataset.coco, results, image_ids=image_ids, backend=eval_backend)
    skipped = len(dataset) - len(image_ids)
    note = dataset.ground_truth_note + (f"; {skipped} unreadable images skipped" if skipped else "")
    return metrics, f"Evaluation {note}\n{summary}"


def predict_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    score_threshold: float,
    device: torch.device | str = "cpu",
) -> tuple[Path, int]:
    """Draw each image's detections into ``out_dir`` and write them all to
    ``out_dir/detections.json``; returns the JSON's path and the image count.

    ``inputs`` are image files, folders (their images, sorted) and globs.
    Every input is resolved and opened before anything is written; each
    drawing keeps its input's path relative to the inputs' common folder
    (``a/img.jpg`` and ``b/img.jpg`` both survive), as a PNG.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--threshold must be in [0, 1] (a score), got {score_threshold}")
    paths = expand_image_inputs(inputs)
    for path, size in zip(paths, read_sizes(paths)):  # every input an image, before any write
        if isinstance(size, str):
            raise DataError(f"cannot read image {path}: {size}")
    loaded = load_model(checkpoint, device=device)
    transform = build_transforms(loaded.augmentation, train=False)
    out_dir = Path(out_dir)
    names = _output_names(paths)
    progress = RateLine("predict", len(paths))
    records = []
    for index, path in enumerate(paths):
        image = _open_image(path)
        entries = detections_of(loaded, image, score_threshold, transform)
        drawing = out_dir / names[index]
        drawing.parent.mkdir(parents=True, exist_ok=True)
        draw_detections(image, entries).save(drawing)
        records.append(
            {
                "file": str(path),
                "drawing": str(drawing),
                "width": image.width,
                "height": image.height,
                "detections": entries,
            }
        )
        progress.advance(1)
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(records, indent=2))
    return json_path, len(records)


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


def expand_image_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their image files, sorted) and globs -> image paths, each once.

    Raises:
        DataError: an input that matches nothing, or a folder with no images.
    """
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matched:
                raise DataError(f"{text!r} matches no file")
            paths += matched
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(
                    f"folder {text} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths += found
        elif Path(text).is_file():
            paths.append(Path(text))
        else:
            raise DataError(f"image {text} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if not unique:
        raise DataError("no image to predict on")
    return unique


def _output_names(paths: list[Path]) -> list[Path]:
    """Each path relative to the paths' common folder, as ``.png``: unique as the paths."""
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(common).with_suffix(".png") for p in paths]


def _open_image(path: Path) -> Image.Image:
    try:
        return open_rgb(path)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except ImageReadError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


class RateLine:
    """A progress line (images/s and ETA) every few seconds, for runs that last."""

    def __init__(self, what: str, total: int, every_s: float = 5.0):
        self.what, self.total, self.every_s = what, total, every_s
        self.done = 0
        self.started = self.last = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        if now - self.started < self.every_s:  # a short run: no progress line at all
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        print(
            f"[detr-ray] {self.what}: {self.done}/{self.total} images "
            f"({rate:.1f} images/s, ETA {int(eta) // 60}:{int(eta) % 60:02d})",
            file=sys.stderr,
            flush=True,
        )


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
    "expand_image_inputs",
    "resolve_device",
    "describe_detections",
    "detect_batch",
    "draw_detections",
    "evaluate_checkpoint",
    "predict_images",
]
