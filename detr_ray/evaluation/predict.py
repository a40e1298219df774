"""``detr-ray predict`` and ``detr-ray eval --checkpoint``: a checkpoint run over images.

Single-process and Ray-free. Inputs are checked (every image opened) before
anything is written; progress is a line every few seconds.
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
from PIL import Image

from detr_ray.checkpoint import load_model
from detr_ray.data.annotations import coco_from_dict, load_coco_json
from detr_ray.data.coco import CocoDetection
from detr_ray.data.collate import PadCollate
from detr_ray.data.images import ImageReadError, open_rgb, read_sizes
from detr_ray.data.transforms import build_transforms
from detr_ray.errors import ConfigError, DataError
from detr_ray.evaluation.coco_eval import evaluate, to_coco_results
from detr_ray.evaluation.detect import detect_batch, detections_of, draw_detections

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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
    raw_ground_truth: bool = False,
    class_agnostic: bool = False,
) -> tuple[dict[str, float], str]:
    """COCO box metrics of a checkpoint on a dataset (see
    :func:`detr_ray.evaluation.coco_eval.evaluate`, ``class_agnostic`` included).

    The summary says what was scored: the dataset's cleaned ground truth over
    the images that were run (see :class:`~detr_ray.data.coco.CocoDetection`),
    or with ``raw_ground_truth`` the annotation file as it is, over those images.
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
    skipped = len(dataset) - len(image_ids)
    if raw_ground_truth:
        ground_truth = coco_from_dict(load_coco_json(ann_file))
        note = f"scored against {ann_file} as it is (--raw-ground-truth)"
    else:
        ground_truth = dataset.coco
        note = dataset.ground_truth_note
    metrics, summary = evaluate(
        ground_truth,
        results,
        image_ids=image_ids,
        backend=eval_backend,
        class_agnostic=class_agnostic,
    )
    note += f"; {skipped} unreadable images skipped" if skipped else ""
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
