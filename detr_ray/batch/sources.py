"""The images a batch prediction reads: files, folders and globs on this
machine's file system, or object-store prefixes and objects, listed once.

A location's ``file`` (what its record is keyed by) is its absolute path, or
its URI without a query. No Ray here.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from detr_ray import storage
from detr_ray.data.image_folder import BucketFolder
from detr_ray.errors import DataError
from detr_ray.evaluation.predict import IMAGE_SUFFIXES, expand_image_inputs
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions


@dataclass(frozen=True)
class ImageSources:
    """What to read: ``files`` (absolute paths, or ``bucket/key`` in ``bucket_scheme``)."""

    files: list[str]
    bucket_scheme: str | None = None  # "s3" or "gs" when the files are objects

    def record_name(self, path: str) -> str:
        """The ``file`` field of the image Ray Data read at ``path``."""
        return f"{self.bucket_scheme}://{path}" if self.bucket_scheme else path


def list_sources(inputs: Sequence[str], options: StorageOptions = DEFAULT_OPTIONS) -> ImageSources:
    """Every image of ``inputs``: all local, or all in one object store.

    Raises:
        DataError: an input that matches nothing, or a mix of local and bucket inputs.
    """
    uris = [i for i in inputs if storage.is_uri(i)]
    if not uris:
        return ImageSources([str(p) for p in expand_image_inputs(inputs)])
    schemes = {i.split("://", 1)[0] for i in uris}
    if len(uris) != len(inputs) or len(schemes) > 1:
        raise DataError(
            "predict --cluster reads images from one place: all inputs local, or all in one "
            f"object store (got {', '.join(inputs)})"
        )
    files: list[str] = []
    for uri in uris:
        base = storage.without_query(uri)
        kind = storage.kind(uri, options)
        if kind == "file":
            files.append(base.split("://", 1)[1])
            continue
        if kind == "missing":
            raise DataError(f"{base} does not exist (no such object or prefix)")
        prefix = base.split("://", 1)[1].rstrip("/")
        found = sorted(
            posixpath.join(prefix, name)
            for name in BucketFolder(uri, options).listing()
            if posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(f"{base} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
    return ImageSources(list(dict.fromkeys(files)), schemes.pop())
