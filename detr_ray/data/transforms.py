"""DETR's augmentation and preprocessing, on PIL images (no torchvision).

Every transform is a callable ``(image, target) -> (image, target)``. Until
the last step ``target["boxes_xyxy"]`` holds ``(G, 4)`` absolute-pixel boxes
of the current image; :class:`ToTensor` turns the image into a ``(3, H, W)``
uint8 tensor and the boxes into ``target["boxes"]``, normalised cxcywh
relative to the transformed, unpadded image (the format the model predicts and
the loss takes), and records ``target["size"] = (h, w)``.

Images stay uint8 until they reach the device that runs the model: a quarter
of the bytes between loader processes and to the GPU. :func:`normalize_images`
then applies the ImageNet normalisation (and zeroes the padding, as the
official DETR's pad-after-normalise does).

Randomness comes from Python's ``random`` module, which ``DataLoader`` seeds
in every worker.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.data.sizes import resized_hw
from detr_ray.ops.boxes import xyxy_to_cxcywh

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(config: AugmentationConfig, train: bool):
    """The training (random) or validation (deterministic) pipeline."""
    to_tensor = ToTensor()
    if not train:
        return Compose([Resize(config.val_scale, config.max_size), to_tensor])
    multi_scale = RandomResize(config.train_scales, config.max_size)
    crop_then_resize = Compose(
        [
            RandomResize(config.crop_resize_scales),
            RandomSizeCrop(*config.crop_size),
            multi_scale,
        ]
    )
    return Compose(
        [
            RandomHorizontalFlip(config.flip_prob),
            RandomSelect(crop_then_resize, multi_scale, p=config.crop_prob),
            to_tensor,
        ]
    )


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image, target: dict):
        if random.random() >= self.p:
            return image, target
        width = image.width
        boxes = target["boxes_xyxy"]
        flipped = torch.stack(
            (width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), 1
        )
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {**target, "boxes_xyxy": flipped}


def resize(image: Image.Image, target: dict, short_side: int, max_size: int | None):
    """Bilinear resize; boxes are scaled by the same per-axis factors."""
    height, width = resized_hw(image.height, image.width, short_side, max_size)
    if (height, width) == (image.height, image.width):
        return image, target
    scale = torch.tensor(
        [width / image.width, height / image.height] * 2, dtype=target["boxes_xyxy"].dtype
    )
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return resized, {**target, "boxes_xyxy": target["boxes_xyxy"] * scale}


class Resize:
    def __init__(self, short_side: int, max_size: int | None = None):
        self.short_side, self.max_size = short_side, max_size

    def __call__(self, image, target):
        return resize(image, target, self.short_side, self.max_size)


class RandomResize:
    """Resize the short side to a random choice of ``sizes``."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, image, target):
        return resize(image, target, random.choice(self.sizes), self.max_size)


def crop(image: Image.Image, target: dict, top: int, left: int, height: int, width: int):
    """Crop; boxes are shifted, clipped to the crop, and dropped when empty."""
    boxes = target["boxes_xyxy"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    limit = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    cropped = image.crop((left, top, left + width, top + height))
    return cropped, {**target, "boxes_xyxy": boxes[keep], "labels": target["labels"][keep]}


class RandomSizeCrop:
    """A crop with random sides in ``[min_size, max_size]`` (at most the image's)."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target):
        width = random.randint(min(self.min_size, image.width), min(image.width, self.max_size))
        height = random.randint(min(self.min_size, image.height), min(image.height, self.max_size))
        top = random.randint(0, image.height - height)
        left = random.randint(0, image.width - width)
        return crop(image, target, top, left, height, width)


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second``."""

    def __init__(self, first, second, p: float = 0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target):
        if random.random() < self.p:
            return self.first(image, target)
        return self.second(image, target)


class ToTensor:
    """PIL image -> ``(3, H, W)`` uint8; ``boxes_xyxy`` (pixels) -> ``boxes``
    (normalised cxcywh); adds ``size = (h, w)``."""

    def __call__(self, image: Image.Image, target: dict):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
        height, width = image.height, image.width
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes_cxcywh = xyxy_to_cxcywh(target["boxes_xyxy"].float()) / scale
        out = {k: v for k, v in target.items() if k != "boxes_xyxy"}
        out.update(boxes=boxes_cxcywh, size=(height, width))
        return pixels.permute(2, 0, 1).contiguous(), out


def normalize_images(
    images: torch.Tensor,
    padding_mask: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 -> float ``(pixel / 255 - mean) / std``, 0 where padded.

    ``padding_mask`` is ``(B, H, W)``, True = padding.
    """
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    normalized = (images.float().div_(255) - mean_t).div_(std_t)
    return normalized.masked_fill_(padding_mask[:, None], 0.0)
