"""Where a dataset's image files are: a local (or shared) folder, or a bucket prefix.

An :class:`ImageFolder` answers three questions about the images an
annotation file names by ``file_name`` (``/``-separated, possibly in
subfolders): which are missing (one listing, never a request per image),
what the bytes of one are, and the bytes of a batch of them read at once.

- :class:`LocalFolder`: a folder on this machine's file system.
- :class:`BucketFolder`: ``s3://bucket/prefix`` or ``gs://...`` (endpoint and
  region as :mod:`detr_ray.storage` takes them). The prefix is listed once;
  each read is one GET, retried with exponential backoff on errors other than
  a missing object; an optional :class:`~detr_ray.data.node_cache.NodeCache`
  keeps what was read on the node's disk.

:meth:`ImageFolder.read_many` reads a batch on a bounded thread pool (the
object store's latency overlaps; local disks are no slower for it), in the
caller's order. No Ray, no MLflow here.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from detr_ray import storage
from detr_ray.data.images import missing_files
from detr_ray.data.node_cache import NodeCache
from detr_ray.storage import DEFAULT_OPTIONS, StorageOptions

READ_ATTEMPTS = 4  # per object, each also retried once inside pyarrow
BACKOFF_S = 0.25  # before the 2nd attempt; doubled before each next one


class ImageFolder:
    """The images of one dataset (see the module docstring)."""

    location: str

    def exists(self) -> bool:
        raise NotImplementedError

    def missing(self, file_names: Iterable[str]) -> list[str]:
        """The ``file_names`` that are not there, in their given order."""
        raise NotImplementedError

    def read(self, file_name: str) -> bytes:
        """The bytes of one image.

        Raises:
            FileNotFoundError: no such file or object.
            OSError: it could not be read (after the retries, for a bucket).
        """
        raise NotImplementedError

    def where(self, file_name: str) -> str:
        """The image's path or URI, for messages."""
        return storage.join(storage.without_query(self.location), file_name)

    def read_many(self, file_names: Sequence[str], threads: int) -> list[bytes | OSError]:
        """Each image's bytes, or the error that reading it raised, in the given order;
        up to ``threads`` reads at once."""
        if threads <= 1 or len(file_names) <= 1:
            return [self._read_or_error(n) for n in file_names]
        with ThreadPoolExecutor(max_workers=min(threads, len(file_names))) as pool:
            return list(pool.map(self._read_or_error, file_names))

    def _read_or_error(self, file_name: str) -> bytes | OSError:
        try:
            return self.read(file_name)
        except OSError as e:  # FileNotFoundError too
            return e


class LocalFolder(ImageFolder):
    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.path = Path(location)

    def exists(self) -> bool:
        return self.path.is_dir()

    def missing(self, file_names: Iterable[str]) -> list[str]:
        return missing_files(self.path, file_names)

    def read(self, file_name: str) -> bytes:
        return (self.path / file_name).read_bytes()

    def where(self, file_name: str) -> str:
        return str(self.path / file_name)


class BucketFolder(ImageFolder):
    """Images under an object-store prefix; ``cache``: a node-local copy of each."""

    def __init__(
        self,
        location: str,
        options: StorageOptions = DEFAULT_OPTIONS,
        cache: NodeCache | None = None,
    ):
        self.location = location
        self.options = options
        self.cache = cache
        self._sizes: dict[str, int] | None = None  # file_name -> bytes, from the listing
        self._filesystem = None

    def __getstate__(self) -> dict:  # a loader process opens its own connection
        return {**self.__dict__, "_filesystem": None}

    def exists(self) -> bool:
        return storage.kind(self.location, self.options) == "folder"

    def listing(self) -> dict[str, int]:
        """Every object under the prefix (``file_name -> size``), listed once."""
        if self._sizes is None:
            import pyarrow.fs as pafs

            filesystem, root = self._open()
            selector = pafs.FileSelector(root, allow_not_found=True, recursive=True)
            self._sizes = {
                posixpath.relpath(info.path, root): info.size
                for info in filesystem.get_file_info(selector)
                if info.type == pafs.FileType.File
            }
        return self._sizes

    def missing(self, file_names: Iterable[str]) -> list[str]:
        present = self.listing()
        return [n for n in file_names if n not in present]

    def read(self, file_name: str) -> bytes:
        uri = self.where(file_name)
        size = (self._sizes or {}).get(file_name)
        if self.cache is not None:
            cached = self.cache.get(uri, size)
            if cached is not None:
                return cached
        data = self._get(file_name)
        if self.cache is not None:
            self.cache.put(uri, data)
        return data

    def _get(self, file_name: str) -> bytes:
        filesystem, root = self._open()
        path = posixpath.join(root, file_name)
        for attempt in range(READ_ATTEMPTS):
            try:
                with filesystem.open_input_stream(path) as stream:
                    return stream.read()
            except FileNotFoundError:
                raise
            except OSError as e:
                if attempt == READ_ATTEMPTS - 1:
                    raise OSError(
                        f"{self.where(file_name)}: {READ_ATTEMPTS} attempts failed, the last: {e}"
                    ) from None
                time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _open(self):
        if self._filesystem is None:
            self._filesystem = storage.open_location(self.location, self.options)
        return self._filesystem


def open_image_folder(
    location: str | os.PathLike,
    options: StorageOptions = DEFAULT_OPTIONS,
    cache: NodeCache | None = None,
) -> ImageFolder:
    """A :class:`BucketFolder` for an object-store URI, else a :class:`LocalFolder`
    (``cache`` is for buckets only: local files need none)."""
    if storage.is_uri(location):
        return BucketFolder(str(location), options, cache)
    return LocalFolder(location)
