"""Resuming a sweep: its folder must hold one, the cluster as many trials as before."""

from __future__ import annotations

import json

from detr_ray import storage
from detr_ray.errors import ConfigError
from detr_ray.storage import StorageOptions

CONCURRENCY_FILE = "detr_ray_sweep.json"  # in the sweep folder: trials at once


def record_concurrency(sweep_dir: str, at_once: int, options: StorageOptions) -> None:
    """Remember how many trials a new sweep runs at once (Tune resumes it so)."""
    record = json.dumps({"trials_at_once": at_once}).encode()
    storage.write_bytes(storage.join(sweep_dir, CONCURRENCY_FILE), record, options)


def check_resumed_concurrency(
    sweep_dir: str, resume: bool, at_once: int, options: StorageOptions
) -> None:
    """A resumed sweep keeps the number of trials at once it was started with
    (Tune restores it): refuse to resume it on a cluster that holds fewer."""
    record = storage.join(sweep_dir, CONCURRENCY_FILE)
    if not resume or storage.kind(record, options) != "file":
        return
    started_with = int(json.loads(storage.read_bytes(record, options))["trials_at_once"])
    if started_with > at_once:
        raise ConfigError(
            f"the sweep in {storage.without_query(sweep_dir)} was started running "
            f"{started_with} trials at once and Tune resumes it so; this cluster holds "
            f"{at_once}: resume it on a cluster as large as the first, or start a new sweep "
            "(another --name)"
        )


def check_resume(sweep_dir: str, resume: bool, options: StorageOptions) -> None:
    state_exists = storage.kind(storage.join(sweep_dir, "tuner.pkl"), options) == "file"
    shown = storage.without_query(sweep_dir)
    if resume and not state_exists:
        raise ConfigError(f"--resume: no sweep to resume in {shown}; drop --resume to start")
    if not resume and storage.kind(sweep_dir, options) != "missing":
        raise ConfigError(
            f"a sweep already exists in {shown}: add --resume to continue it, or pick "
            "another --name"
        )
