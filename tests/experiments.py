"""The tiny experiment the Ray tests train: ``detr_r18_tiny`` on generated shapes."""

from __future__ import annotations

from pathlib import Path


def tiny_experiment(shapes, storage: Path, name: str, **sections: dict) -> dict:
    """A config dict (YAML's shape) for a few steps on ``shapes`` (a generated
    ``SyntheticDataset``), stored in ``storage``; ``sections`` update its sections."""
    raw: dict = {
        "model": {"preset": "detr_r18_tiny"},
        "data": {
            "train_ann": str(shapes.train_ann),
            "train_images": str(shapes.train_images),
            "val_ann": str(shapes.val_ann),
            "val_images": str(shapes.val_images),
            "augmentation": {"scaled_to": 64},
            "num_workers": 0,
        },
        "optim": {"lr": 1e-3, "backbone_lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 2, "log_every": 1, "lr_drop_epochs": []},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "run": {"name": name, "storage_path": str(storage), "max_failures": 0},
        "tracking": {"log_images": 1},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw
