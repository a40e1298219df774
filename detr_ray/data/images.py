"""Image files: which exist, how big they are, and reading any of them as RGB.

- :func:`missing_files` lists each folder once (not a ``stat`` per image), so
  checking COCO's 118k training images takes seconds even on a network
  file system;
- :func:`read_sizes` reads only the headers, in processes for large sets;
- :func:`open_rgb` turns every mode PIL reads into 8-bit RGB, scaling 16-bit
  images to 8 bits (PIL's own conversion would clip them to white) and
  refusing what has no sensible RGB (floating-point images).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
PARALLEL_FROM = 2000  # images; fewer are read in this process
# Not fork: the caller may hold threads (torch's, a logger's) whose locks a forked
# child would inherit locked. A fresh interpreter imports only this module.
_CONTEXT = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")


class ImageReadError(Exception):
    """An image file that cannot be read as RGB; the message says why (not the path)."""


def missing_files(image_dir: Path, file_names: Iterable[str]) -> list[str]:
    """The ``file_names`` (relative to ``image_dir``, ``/``-separated, possibly in
    subfolders) that are not files there, in their given order."""
    names = list(file_names)
    by_folder: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_folder[str(PurePosixPath(name).parent)].append(name)
    missing: set[str] = set()
    for folder, in_folder in by_folder.items():
        try:
            with os.scandir(image_dir / folder) as entries:
                present = {e.name for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing.update(n for n in in_folder if PurePosixPath(n).name not in present)
    return [n for n in names if n in missing]


def read_sizes(paths: Sequence[Path]) -> list[tuple[int, int] | str]:
    """Each image's ``(width, height)`` from its header, or why it cannot be read.

    Parsing a header is Python work (PIL), so a large set is spread over
    processes, one per core: COCO's 118k training images take seconds.
    """
    if len(paths) < PARALLEL_FROM:
        return [_header_size(p) for p in paths]
    workers = max(1, min(os.cpu_count() or 1, 16))
    chunk = -(-len(paths) // (workers * 4))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_CONTEXT) as pool:
        return list(pool.map(_header_size, paths, chunksize=chunk))


def _header_size(path: Path) -> tuple[int, int] | str:
    try:
        with Image.open(path) as opened:
            return opened.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as 8-bit RGB.

    Raises:
        FileNotFoundError: no file there.
        ImageReadError: not an image PIL can decode, or a mode with no RGB meaning.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_rgb(opened)
    except FileNotFoundError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageReadError(f"{type(e).__name__}: {e}") from None


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes (PNG, JPEG...) as 8-bit RGB; ImageReadError if they are no image."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            return to_rgb(opened)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageReadError(f"{type(e).__name__}: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (see :func:`open_rgb`)."""
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        pixels = np.asarray(image)
        if image.mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
            raise ImageReadError(
                f"32-bit integer pixels from {pixels.min()} to {pixels.max()}: no 8-bit meaning"
            )
        eight_bit = np.round(pixels.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 -> 255
        return Image.fromarray(eight_bit, "L").convert("RGB")
    if image.mode == "F":
        raise ImageReadError("32-bit floating-point pixels: convert the image to 8 bits first")
    return image.convert("RGB")
