"""``detr-ray predict --cluster``: one Ray Data pipeline over the cluster.

    read (binary files, streaming) -> decode + resize (CPU tasks)
        -> the model (a pool of actors, one device each) -> JSON Lines parts

The driver lists the inputs once, leaves out every image the parts under
``--out`` hold already (a re-run goes on where the last one stopped), loads
the checkpoint once and sends it to the actors. Ray Data streams the rest:
its progress bars show each stage, and a task or actor that dies is retried
by Ray Data (actors are restarted), so every image is written exactly once.
The records come back to the driver, which writes them in parts of
``part_size`` lines.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from detr_ray import storage
from detr_ray.batch.parts import PartWriter, done_files
from detr_ray.batch.sources import ImageSources, list_sources
from detr_ray.errors import ConfigError
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions


@dataclass(frozen=True)
class ClusterPrediction:
    """How a batch prediction runs (``predict --cluster``'s options)."""

    score_threshold: float = 0.5
    batch_size: int = 8  # rows an actor takes at a time
    max_actors: int = 2  # the model's actors: from 1 up to this many
    gpu: bool = False  # one GPU per actor
    part_size: int = 1000  # records per part file

    def __post_init__(self):
        for name in ("batch_size", "max_actors", "part_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(
                f"--threshold must be in [0, 1] (a score), got {self.score_threshold}"
            )


def predict_on_cluster(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str],
    out: str,
    settings: ClusterPrediction = ClusterPrediction(),
    options: StorageOptions = DEFAULT_OPTIONS,
) -> tuple[int, int]:
    """Predict every image of ``inputs`` not yet under ``out``; returns
    ``(images predicted now, images skipped as done)``. Ray must be initialised."""
    from detr_ray.checkpoint import load_model

    sources = list_sources(inputs, options)
    done = done_files(out, options) if storage.kind(out, options) == "folder" else set()
    todo = [p for p in sources.files if sources.record_name(p) not in done]
    skipped = len(sources.files) - len(todo)
    if not todo:
        return 0, skipped
    loaded = load_model(checkpoint, device="cpu")
    writer = PartWriter(out, settings.part_size, options)
    for path, width, height, found in _detect(loaded, sources, todo, settings, options):
        record = {"file": sources.record_name(path), "width": width, "height": height}
        writer.add([record | {"detections": found}])
    writer.flush()
    return writer.written, skipped


def evaluate_on_cluster(
    checkpoint: str | os.PathLike,
    ann_file: str,
    image_dir: str,
    settings: ClusterPrediction = ClusterPrediction(),
    options: StorageOptions = DEFAULT_OPTIONS,
    eval_backend: str = "auto",
    raw_ground_truth: bool = False,
    class_agnostic: bool = False,
) -> tuple[dict[str, float], str]:
    """``eval --checkpoint --cluster``: every image of the set through the pipeline,
    scored as :func:`~detr_ray.evaluation.predict.evaluate_checkpoint` scores
    (the cleaned ground truth, the top 100 detections of each image, no
    threshold): the same metrics as in-process evaluation one image at a time."""
    from detr_ray.checkpoint import load_model
    from detr_ray.data.annotations import coco_from_dict, load_coco_json
    from detr_ray.data.coco import CocoDetection
    from detr_ray.evaluation.coco_eval import evaluate

    loaded = load_model(checkpoint, device="cpu")
    dataset = CocoDetection(
        ann_file,
        image_dir,
        label_map=loaded.label_map,
        storage=options,
        bad_image_hint="fix the image folder (eval --cluster reads every image listed)",
    )
    # every image the set lists (the dataset has checked they are there), by its path
    if storage.is_uri(image_dir):
        scheme, _, rest = storage.without_query(image_dir).partition("://")
        root, bucket_scheme = rest.rstrip("/"), scheme
    else:
        root, bucket_scheme = str(Path(image_dir).resolve()), None
    image_of = {posixpath.join(root, r.file_name): r.image_id for r in dataset.records}
    todo = list(image_of)
    sources = ImageSources(todo, bucket_scheme)
    settings = replace(settings, score_threshold=0.0)
    results = []
    for path, _, _, found in _detect(loaded, sources, todo, settings, options, coco=True):
        results += [r | {"image_id": image_of[path]} for r in found]
    if raw_ground_truth:
        ground_truth = coco_from_dict(load_coco_json(ann_file, options))
        note = f"scored against {ann_file} as it is (--raw-ground-truth)"
    else:
        ground_truth, note = dataset.coco, dataset.ground_truth_note
    image_ids = sorted(image_of.values())
    metrics, summary = evaluate(
        ground_truth,
        results,
        image_ids=image_ids,
        backend=eval_backend,
        class_agnostic=class_agnostic,
    )
    return metrics, f"Evaluation (Ray Data, {len(image_ids)} images) {note}\n{summary}"


def _detect(loaded, sources, files: list[str], settings: ClusterPrediction, options, coco=False):
    """``(path, width, height, detections)`` of each of ``files``, as the pipeline
    streams them back (in no set order)."""
    import ray

    from detr_ray.batch.stages import Detect, decode_and_resize

    filesystem = None
    if sources.bucket_scheme is not None:
        filesystem, _ = storage.open_location(f"{sources.bucket_scheme}://{files[0]}", options)
    images = ray.data.read_binary_files(files, include_paths=True, filesystem=filesystem)
    prepared = images.map(decode_and_resize, fn_kwargs={"loaded": loaded})
    detected = prepared.map_batches(
        Detect,
        fn_constructor_kwargs={
            "loaded": loaded,
            "score_threshold": settings.score_threshold,
            "device": "cuda" if settings.gpu else "cpu",
            "top_k": 100 if coco else None,
            "coco_results": coco,
        },
        batch_size=settings.batch_size,
        concurrency=(1, settings.max_actors),
        num_gpus=1 if settings.gpu else 0,
        num_cpus=1,
        batch_format="numpy",
    )
    for batch in detected.iter_batches(batch_size=settings.batch_size, batch_format="numpy"):
        for path, width, height, found in zip(
            batch["path"], batch["width"], batch["height"], batch["detections"]
        ):
            yield str(path), int(width), int(height), json.loads(str(found))
