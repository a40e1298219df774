"""The output of a batch prediction: JSON Lines part files under ``--out``.

Each line is one image's record, with the fields of ``predict``'s
``detections.json`` records but the drawing: ``file``, ``width``,
``height``, ``detections``. A part is written whole (a local file is written
beside its name and renamed; an object store's PUT is whole by itself), so a
run killed at any moment leaves only whole parts, and a re-run skips every
image they hold: each image is predicted once over the runs. No Ray here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator

from detr_ray import storage
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions

PART_PREFIX = "part-"
PART_SUFFIX = ".jsonl"


def part_files(out: str, options: StorageOptions = DEFAULT_OPTIONS) -> list[str]:
    """The part files under ``out`` (their locations), in name order."""
    names = storage.list_folder(out, options)
    return [
        storage.join(out, n) for n in names if n.startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)
    ]


def read_records(out: str, options: StorageOptions = DEFAULT_OPTIONS) -> Iterator[dict]:
    """Every record of every part under ``out``."""
    for location in part_files(out, options):
        for line in storage.read_bytes(location, options).decode().splitlines():
            if line.strip():
                yield json.loads(line)


def done_files(out: str, options: StorageOptions = DEFAULT_OPTIONS) -> set[str]:
    """The images (``file`` fields) the parts under ``out`` hold already."""
    return {record["file"] for record in read_records(out, options)}


class PartWriter:
    """Writes records to ``out`` in parts of ``part_size`` lines, named by this run's
    start time so that a re-run adds parts beside the earlier ones."""

    def __init__(self, out: str, part_size: int, options: StorageOptions = DEFAULT_OPTIONS):
        self.out, self.part_size, self.options = out, part_size, options
        self.stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        self.pending: list[dict] = []
        self.parts = 0
        self.written = 0

    def add(self, records: Iterable[dict]) -> None:
        for record in records:
            self.pending.append(record)
            if len(self.pending) >= self.part_size:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"{PART_PREFIX}{self.stamp}-{self.parts:05d}{PART_SUFFIX}"
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.pending).encode()
        _write_whole(storage.join(self.out, name), data, self.options)
        self.parts += 1
        self.written += len(self.pending)
        self.pending = []


def _write_whole(location: str, data: bytes, options: StorageOptions) -> None:
    if storage.is_uri(location):
        storage.write_bytes(location, data, options)
        return
    partial = f"{location}.partial"
    storage.write_bytes(partial, data, options)
    os.replace(partial, location)
