import random

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.data.sizes import resized_hw
from detr_ray.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomHorizontalFlip,
    ToTensor,
    build_transforms,
    crop,
    normalize_images,
    resize,
)


def _target(boxes, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(boxes)) if labels is None else torch.tensor(labels)
    return {"image_id": 1, "boxes_xyxy": boxes, "labels": labels, "orig_size": (0, 0)}


@pytest.mark.parametrize(
    "hw, short, max_size, expected",
    [
        ((480, 640), 800, 1333, (800, 1066)),  # int(800 * 640 / 480)
        ((640, 480), 800, 1333, (1066, 800)),
        ((500, 2000), 800, 1333, (333, 1332)),  # long side capped: round(1333 * 500 / 2000)
        ((800, 1000), 800, 1333, (800, 1000)),  # already there
        ((300, 300), 512, None, (512, 512)),
    ],
)
def test_resized_hw_by_hand(hw, short, max_size, expected):
    assert resized_hw(*hw, short, max_size) == expected


def test_resize_scales_boxes_per_axis():
    image = Image.new("RGB", (40, 20))
    out, target = resize(image, _target([[4, 2, 20, 10]]), 10, None)
    assert out.size == (20, 10)
    assert target["boxes_xyxy"].tolist() == [[2, 1, 10, 5]]


def test_flip_mirrors_boxes():
    image = Image.new("RGB", (50, 10))
    random.seed(0)
    _, target = RandomHorizontalFlip(p=1.0)(image, _target([[5, 1, 15, 9]]))
    assert target["boxes_xyxy"].tolist() == [[35, 1, 45, 9]]


def test_crop_clips_and_drops_boxes_with_their_labels():
    image = Image.new("RGB", (100, 100))
    boxes = [[10, 10, 30, 30], [45, 45, 70, 70], [80, 80, 95, 95], [0, 50, 50, 52]]
    out, target = crop(image, _target(boxes, [5, 6, 7, 8]), top=40, left=40, height=30, width=20)
    assert out.size == (20, 30)
    # box 1 clipped to the crop's right edge; box 2 outside; box 3 touches no pixel
    # of the crop (x2 = 50 -> 10 > 0, y range 50..52 -> 10..12): kept.
    assert target["boxes_xyxy"].tolist() == [[5, 5, 20, 30], [0, 10, 10, 12]]
    assert target["labels"].tolist() == [6, 8]


def test_normalisation_and_cxcywh_by_hand():
    image = Image.new("RGB", (4, 2), (255, 0, 128))
    tensor, target = ToTensor()(image, _target([[1, 0, 3, 2]]))
    assert tensor.shape == (3, 2, 4) and tensor.dtype == torch.uint8
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    mask[0, :, 3] = True  # pretend the last column is padding
    tensor = normalize_images(tensor[None], mask)[0]
    assert (tensor[:, :, 3] == 0).all()
    expected = [
        (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1],
        (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    torch.testing.assert_close(tensor[:, 0, 0], torch.tensor(expected))
    assert target["boxes"].tolist() == [[0.5, 0.5, 0.5, 1.0]]
    assert target["size"] == (2, 4) and "boxes_xyxy" not in target


def test_training_pipeline_keeps_boxes_on_their_pixels():
    """A red rectangle on grey: after any random flip/crop/resize, the
    transformed box must still frame the red pixels (within resampling blur)."""
    config = AugmentationConfig(
        train_scales=(64, 80, 96),
        max_size=160,
        crop_prob=0.5,
        crop_resize_scales=(60, 80),
        crop_size=(40, 70),
        val_scale=96,
    )
    pipeline = build_transforms(config, train=True)
    pixels = np.full((90, 120, 3), 128, dtype=np.uint8)
    pixels[20:50, 10:70] = (255, 0, 0)  # off-centre, so a wrong flip shows
    image = Image.fromarray(pixels)
    random.seed(1)
    seen_crop = seen_flip_size = 0
    for _ in range(60):
        tensor, target = pipeline(image, _target([[10, 20, 70, 50]]))
        h, w = target["size"]
        red = (tensor[0] > 212) & (tensor[1] < 43)  # uint8 red, blended edges excluded
        if len(target["boxes"]) == 0:
            assert red.sum() <= 2  # cropped away
            continue
        cx, cy, bw, bh = (target["boxes"][0] * torch.tensor([w, h, w, h])).tolist()
        ys, xs = torch.nonzero(red, as_tuple=True)
        red_box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
        # bilinear resampling blurs an edge by up to ~2 px at these scales
        assert max(abs(a - b) for a, b in zip(red_box, box)) <= 2.0, (red_box, box)
        seen_crop += (bw / w) > 60 / 120 + 0.05
        seen_flip_size += min(h, w) in (64, 80, 96)
    assert seen_crop > 0 and seen_flip_size > 0


def test_validation_pipeline_is_deterministic():
    pipeline = build_transforms(AugmentationConfig(val_scale=50, max_size=100), train=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    a, ta = pipeline(image, _target([[1, 2, 10, 20]]))
    b, tb = pipeline(image, _target([[1, 2, 10, 20]]))
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert ta["size"] == (50, 66)
