"""The size an image is resized to: DETR's rule, as plain arithmetic (no torch, no pillow).

Used by the transforms that resize, and by the dataset profile that predicts
object sizes at a training scale without opening an image.
"""

from __future__ import annotations


def resized_hw(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    """Output ``(h, w)`` with the short side ``short_side`` and the long side at
    most ``max_size``, keeping the aspect ratio (the official DETR's rounding)."""
    if max_size is not None:
        short, long = min(height, width), max(height, width)
        if long / short * short_side > max_size:
            short_side = int(round(max_size * short / long))
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)
