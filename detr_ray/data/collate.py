"""Batching: pad images to a common size and record what is padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from detr_ray.data.transforms import normalize_images


class ImageMeta(NamedTuple):
    """Per-image facts the model, loss and evaluation need (sizes are (h, w))."""

    image_id: int
    orig_size: tuple[int, int]  # as in the annotation file
    img_shape: tuple[int, int]  # after the transforms, before padding (the reference's name)
    batch_input_shape: tuple[int, int]  # the padded batch


@dataclass(frozen=True)
class Batch:
    """A padded batch.

    images        (B, 3, H, W) uint8, zero where padded (see :meth:`inputs`)
    padding_mask  (B, H, W) bool, True = padding, False = pixel
    targets       B dicts with ``labels (G,)`` and ``boxes (G, 4)`` normalised
                  cxcywh relative to the image's own unpadded size
    metas         B :class:`ImageMeta`
    """

    images: Tensor
    padding_mask: Tensor
    targets: list[dict]
    metas: list[ImageMeta]

    def __len__(self) -> int:
        return self.images.shape[0]

    def inputs(self) -> tuple[Tensor, Tensor]:
        """What the model takes: ImageNet-normalised float images (0 in the
        padding) and the padding mask, on the batch's device."""
        return normalize_images(self.images, self.padding_mask), self.padding_mask

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            images=move(self.images),
            padding_mask=move(self.padding_mask),
            targets=[
                {"labels": move(t["labels"]), "boxes": move(t["boxes"])} for t in self.targets
            ],
        )

    def pin_memory(self) -> Batch:
        """Lets ``DataLoader(pin_memory=True)`` pin this custom batch type."""
        return replace(
            self,
            images=self.images.pin_memory(),
            padding_mask=self.padding_mask.pin_memory(),
            targets=[{k: v.pin_memory() for k, v in t.items()} for t in self.targets],
        )


class PadCollate:
    """``DataLoader`` collate function: pad to the batch's largest image.

    Args:
        size_divisor: also round the padded height and width up to a multiple
            of this (e.g. 32, the backbone's stride); 1 = no rounding.

    Samples that are ``None`` (unreadable images skipped by the dataset) are
    dropped; a batch with none left is ``None``.
    """

    def __init__(self, size_divisor: int = 1):
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.size_divisor = size_divisor

    def __call__(self, samples: Sequence) -> Batch | None:
        samples = [s for s in samples if s is not None]
        if not samples:
            return None
        images = [image for image, _ in samples]
        height = _round_up(max(im.shape[1] for im in images), self.size_divisor)
        width = _round_up(max(im.shape[2] for im in images), self.size_divisor)
        batch = images[0].new_zeros(len(images), 3, height, width)
        padding_mask = torch.ones(len(images), height, width, dtype=torch.bool)
        metas, targets = [], []
        for i, (image, target) in enumerate(samples):
            h, w = image.shape[1:]
            batch[i, :, :h, :w] = image
            padding_mask[i, :h, :w] = False
            targets.append({"labels": target["labels"], "boxes": target["boxes"]})
            metas.append(
                ImageMeta(
                    image_id=int(target["image_id"]),
                    orig_size=(int(target["orig_size"][0]), int(target["orig_size"][1])),
                    img_shape=(int(h), int(w)),
                    batch_input_shape=(height, width),
                )
            )
        return Batch(batch, padding_mask, targets, metas)


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor
