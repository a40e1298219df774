"""Everything the driver settles before Ray starts: resolved paths and every check.

:func:`prepare_run` turns a loaded config into the one a run uses (absolute
paths, ``model.num_classes`` from the annotations, the tracking store pinned)
and fails, with one line naming the file, key or value and what to do,
before any Ray call and before anything is written, on:

- a checkpoint named by ``run.resume_from`` or ``model.init_from`` that is
  missing, unreadable, unsafe or of the wrong kind;
- a tracking URI of an unsupported scheme, or an ``http`` server that does
  not answer;
- a storage path that cannot be written;
- ``scaling.use_gpu`` on a machine without a GPU (a local run);
- an annotation file that is missing or malformed, an image folder that does
  not exist, an image file that is missing, unreadable or of another size
  than its annotation says (unless ``data.on_bad_image: skip``); for datasets
  in object storage, a bucket or object that is not there or credentials the
  store refuses (the image prefix is listed once; no image is read).

It also profiles the training set and returns the warnings of
:mod:`detr_ray.train.data_fit` (objects too small for the model, more
objects than queries, rare classes), which the launcher prints.

The synthetic dataset, when the config asks for it and it is missing, is
generated after the other checks passed: it is the one thing written here.
Pure of Ray and MLflow.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from detr_ray.checkpoint import checkpoint_kind, load_checkpoint, read_source
from detr_ray.config import ExperimentConfig
from detr_ray.data.annotations import load_coco_json
from detr_ray.data.check import DatasetReport, check_dataset
from detr_ray.data.labels import LabelMap
from detr_ray.data.profile import profile_coco
from detr_ray.errors import CheckpointError, ConfigError, DataError
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions, is_uri, open_location, without_query
from detr_ray.tracking.store import check_tracking, find_tracking_uri, tracking_uri_of
from detr_ray.train.data_fit import data_fit_warnings, training_scale


@dataclass
class PreparedRun:
    """A config ready to run, the label map of its training categories, and
    what the training set's profile warns about (:mod:`detr_ray.train.data_fit`).

    ``annotations``: when an annotation file is in object storage, both files'
    contents as read here (``{"train": ..., "val": ...}``), for the workers.
    """

    config: ExperimentConfig
    label_map: LabelMap
    warnings: list[str] = dataclasses.field(default_factory=list)
    annotations: dict | None = None


def prepare_run(
    config: ExperimentConfig, local_cluster: bool = True, check_data: bool = True
) -> PreparedRun:
    """Resolve and check ``config`` (see the module docstring).

    Args:
        local_cluster: the run starts Ray on this machine (so ``use_gpu``
            needs a GPU here); False for an ``--address`` of a cluster.
        check_data: read the datasets' annotations and list their images
            (``detr-ray config show`` only needs the categories).
    """
    config = resolve_paths(config)
    check_checkpoints(config)
    check_tracking(tracking_uri_of(config))
    check_storage(config.run.storage_path, config.run.storage)
    if config.scaling.use_gpu and local_cluster:
        check_local_gpus(config.scaling.num_workers)
    generate_synthetic_data_if_missing(config)
    if check_data:
        check_datasets(config)
    train_data = load_coco_json(config.data.train_ann, config.run.storage)
    label_map = LabelMap.from_categories(train_data["categories"])
    config = with_num_classes(config, label_map)
    scale, max_size = training_scale(config.data.augmentation)
    warnings = data_fit_warnings(profile_coco(train_data, scale, max_size), config.model)
    annotations = None
    if is_uri(config.data.train_ann) or is_uri(config.data.val_ann):
        val_data = load_coco_json(config.data.val_ann, config.run.storage)
        annotations = {"train": train_data, "val": val_data}
    return PreparedRun(config, label_map, warnings, annotations)


def resolve_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Absolute paths (``~`` is the home of the machine that runs this: inside a
    cluster job, the head's); the tracking URI resolved
    (:func:`~detr_ray.tracking.store.resolve_tracking_uri`) and pinned here, so
    that workers on other nodes need not share the driver's environment."""
    data = config.data
    synthetic = data.synthetic
    if synthetic is not None:
        synthetic = dataclasses.replace(synthetic, root=_absolute(synthetic.root))
    data = dataclasses.replace(
        data,
        train_ann=_location(data.train_ann),
        train_images=_location(data.train_images),
        val_ann=_location(data.val_ann),
        val_images=_location(data.val_images),
        synthetic=synthetic,
    )
    run = dataclasses.replace(
        config.run,
        storage_path=_location(config.run.storage_path),
        resume_from=_location_or_none(config.run.resume_from),
    )
    init = dataclasses.replace(config.init, init_from=_location_or_none(config.init.init_from))
    uri = find_tracking_uri(config.tracking.uri, run.storage_path)  # none: see prepare_run
    tracking = dataclasses.replace(config.tracking, uri=uri)
    return dataclasses.replace(config, data=data, run=run, init=init, tracking=tracking)


def with_num_classes(config: ExperimentConfig, label_map: LabelMap) -> ExperimentConfig:
    """``model.num_classes`` from the training categories (or checked against them)."""
    num_classes = config.model.num_classes
    if num_classes is None:
        num_classes = label_map.num_classes
    elif num_classes < label_map.num_classes:
        raise ConfigError(
            f"model.num_classes is {num_classes} but {config.data.train_ann} has "
            f"{label_map.num_classes} categories; leave it null to use theirs"
        )
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, num_classes=num_classes)
    )


def resolved_config(config: ExperimentConfig) -> ExperimentConfig:
    """What ``train`` would run, for ``detr-ray config show``: paths resolved,
    ``model.num_classes`` from the training categories (those of the synthetic
    dataset when it is yet to be generated). Checks nothing else, writes nothing."""
    config = resolve_paths(config)
    if Path(config.data.train_ann).is_file():
        categories = load_coco_json(config.data.train_ann, config.run.storage)["categories"]
    elif config.data.synthetic is not None:
        from detr_ray.data.synthetic import KINDS

        categories = list(KINDS[config.data.synthetic.kind])
    else:
        raise DataError(f"data.train_ann {config.data.train_ann} does not exist")
    return with_num_classes(config, LabelMap.from_categories(categories))


# ---------------------------------------------------------------------- the checks
def check_checkpoints(config: ExperimentConfig) -> None:
    """``run.resume_from`` holds training state; ``model.init_from`` holds weights."""
    if config.run.resume_from:
        checkpoint = _load(config.run.resume_from, "run.resume_from", config.run.storage)
        if checkpoint_kind(checkpoint) != "detr-ray" or "train_state" not in checkpoint:
            raise CheckpointError(
                f"run.resume_from {config.run.resume_from} is a {checkpoint_kind(checkpoint)} "
                "checkpoint without training state (optimizer, epoch): it cannot be resumed; "
                "to start from its weights, use model.init_from"
            )
    if config.init.init_from:
        try:
            source = read_source(config.init.init_from, config.run.storage)
        except CheckpointError as e:
            raise CheckpointError(f"model.init_from: {e}") from None
        family = source.config.family if source.config is not None else None
        if family not in (None, config.model.family):
            raise CheckpointError(
                f"model.init_from: {source.description} holds a {family} model, but "
                f"model.family is {config.model.family}: start from weights of the same family "
                "(or only a torchvision ResNet for the backbone)"
            )


def check_storage(storage_path: str, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    """``run.storage_path`` exists as a writable folder, or can be created (nothing is);
    in object storage, its bucket exists and answers."""
    if is_uri(storage_path):
        check_bucket(storage_path, options)
        return
    path = Path(storage_path)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(
            f"run.storage_path {storage_path}: {existing} is a file, not a folder; "
            "pick another run.storage_path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "cannot be written" if existing == path else f"cannot be created in {existing}"
        raise ConfigError(
            f"run.storage_path {storage_path} {what} (permission denied); pick a folder you "
            "can write, e.g. --set run.storage_path=~/detr-ray/runs"
        )


def check_bucket(location: str, options: StorageOptions) -> None:
    """The bucket of an object-store location exists and its endpoint answers."""
    import pyarrow.fs as pafs

    shown = without_query(location)
    try:
        filesystem, path = open_location(location, options)
        bucket = path.split("/", 1)[0]
        found = filesystem.get_file_info(bucket).type
    except (OSError, ValueError) as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"run.storage_path {shown}: cannot reach the object store ({first_line[:300]}); "
            "check run.storage_endpoint (or AWS_ENDPOINT_URL), the network and the credentials"
        ) from None
    if found == pafs.FileType.NotFound:
        raise ConfigError(
            f"run.storage_path {shown}: the bucket {bucket!r} does not exist; create it first "
            f"(e.g. aws s3 mb s3://{bucket})"
        )


def check_local_gpus(num_workers: int) -> None:
    """A local run with ``scaling.use_gpu`` needs a GPU per worker on this machine."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < num_workers:
        raise ConfigError(
            f"scaling.use_gpu (--gpu) asks for {num_workers} GPU(s), one per worker, but this "
            f"machine has {count} (and {os.cpu_count()} CPUs): drop --gpu to train on the CPU, "
            "or pass --address of a cluster with GPUs"
        )


def check_datasets(config: ExperimentConfig) -> list[DatasetReport]:
    """Both datasets as training will read them; a problem that would stop it is raised."""
    data = config.data
    reports = []
    skip = data.on_bad_image == "skip"
    for ann, images in ((data.train_ann, data.train_images), (data.val_ann, data.val_images)):
        report = check_dataset(ann, images, options=config.run.storage)
        problems = report.problems(
            skip_bad_images=skip, hint="fix them, or set data.on_bad_image: skip"
        )
        if problems:
            raise DataError(problems[0])
        reports.append(report)
    return reports


def generate_synthetic_data_if_missing(config: ExperimentConfig) -> None:
    data = config.data
    if data.synthetic is None or is_uri(data.train_ann) or Path(data.train_ann).is_file():
        return
    from detr_ray.data.synthetic import generate

    s = data.synthetic
    print(f"[detr-ray] generating the synthetic dataset in {s.root} (missing)", flush=True)
    generate(Path(s.root), s.num_train, s.num_val, size=s.size, seed=s.seed, kind=s.kind)


def _load(path: str, key: str, options: StorageOptions) -> dict:
    try:
        return load_checkpoint(path, options)
    except CheckpointError as e:
        raise CheckpointError(f"{key}: {e}") from None


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _location(path: str) -> str:
    """An object-store URI as it is; a local path made absolute."""
    return path if is_uri(path) else _absolute(path)


def _location_or_none(path: str | None) -> str | None:
    return None if path is None else _location(path)
