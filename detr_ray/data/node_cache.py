"""A node-local disk cache of objects read from object storage (``data.cache_dir``).

Every process on a node that reads the same bucket prefix shares one copy:
the cache path of an object is a pure function of its URI
(``ROOT/s3/bucket/prefix/file_name``). A copy is written to a temporary file
beside its final name and renamed over it (``os.replace``, atomic on POSIX):
a reader sees either no file or the whole object, and a process killed
mid-write leaves only a ``*.part-*`` file that nothing reads (and the next
writer of that object replaces).

The size limit is checked by each process against what was on disk when it
first used the cache plus what it wrote since: several processes filling one
cache at once may pass the limit by what each writes before it looks again
(every ``RESCAN_EVERY`` writes). Objects are taken as immutable: a cached copy
whose size differs from the size the bucket listing gave is read again.
No Ray, no MLflow here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

RESCAN_EVERY = 256  # writes between two looks at the cache's size on disk
PART_SUFFIX = ".part-"


class NodeCache:
    """Copies of objects under ``root``, at most about ``limit_gb`` GB of them."""

    def __init__(self, root: str | os.PathLike, limit_gb: float):
        self.root = Path(root).expanduser()
        self.limit_bytes = int(limit_gb * 1e9)
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes on disk, as this process knows it
        self._writes = 0

    def __getstate__(self) -> dict:  # a loader process started by spawn gets its own lock
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def path_of(self, uri: str) -> Path:
        """Where ``uri``'s copy lives (``scheme/bucket/key`` under the root; no query)."""
        parts = urlsplit(uri.split("?", 1)[0])
        return self.root / parts.scheme / parts.netloc / parts.path.lstrip("/")

    def get(self, uri: str, size: int | None = None) -> bytes | None:
        """The cached copy of ``uri`` (``None`` if absent, or not ``size`` bytes long)."""
        try:
            data = self.path_of(uri).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data if size is None or len(data) == size else None

    def put(self, uri: str, data: bytes) -> bool:
        """Keep a copy of ``uri``'s ``data``; False when the cache is full."""
        with self._lock:
            if self._used is None or self._writes % RESCAN_EVERY == 0:
                self._used = self._bytes_on_disk()
            if self._used + len(data) > self.limit_bytes:
                return False
            self._used += len(data)
            self._writes += 1
        target = self.path_of(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f"{target.name}{PART_SUFFIX}{os.getpid()}-{threading.get_ident()}")
        try:
            part.write_bytes(data)
            os.replace(part, target)
        except OSError:
            part.unlink(missing_ok=True)  # a full disk: the read still succeeded
            return False
        return True

    def _bytes_on_disk(self) -> int:
        total = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except FileNotFoundError:  # renamed or removed by another process
                    pass
        return total
