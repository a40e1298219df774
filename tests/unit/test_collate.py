"""Padding collation: sizes, masks, metas and the uint8 -> normalised inputs."""

import pytest
import torch

from detr_ray.data.collate import PadCollate
from detr_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def sample(image_id, height, width, value, num_boxes=1):
    image = torch.full((3, height, width), value, dtype=torch.uint8)
    target = {
        "image_id": image_id,
        "labels": torch.arange(num_boxes),
        "boxes": torch.full((num_boxes, 4), 0.5),
        "orig_size": (height * 2, width * 2),
    }
    return image, target


def test_pads_to_the_largest_image_rounded_to_the_divisor():
    batch = PadCollate(size_divisor=8)([sample(1, 10, 20, 100), sample(2, 17, 6, 200, 0)])
    assert batch.images.shape == (2, 3, 24, 24)  # max(10, 17) -> 24, max(20, 6) -> 24
    assert batch.padding_mask.shape == (2, 24, 24)
    # the first image: 10 x 20 pixels, padding below and to the right
    assert not batch.padding_mask[0, :10, :20].any()
    assert batch.padding_mask[0, 10:].all() and batch.padding_mask[0, :, 20:].all()
    assert (batch.images[0, :, :10, :20] == 100).all() and (batch.images[0, :, 10:] == 0).all()
    assert batch.padding_mask[1, :17, :6].sum() == 0 and batch.padding_mask[1].sum() == 576 - 102
    meta = batch.metas[1]
    assert (meta.image_id, meta.orig_size, meta.img_shape) == (2, (34, 12), (17, 6))
    assert meta.batch_input_shape == (24, 24)
    assert batch.targets[1]["labels"].shape == (0,) and len(batch) == 2


def test_divisor_one_pads_to_the_exact_maximum():
    batch = PadCollate()([sample(1, 5, 7, 1), sample(2, 3, 9, 1)])
    assert batch.images.shape[-2:] == (5, 9)


def test_unreadable_samples_are_dropped_and_an_all_unreadable_batch_is_none():
    collate = PadCollate(size_divisor=4)
    assert collate([None, None]) is None
    batch = collate([None, sample(7, 4, 4, 1)])
    assert len(batch) == 1 and batch.metas[0].image_id == 7


def test_inputs_normalise_pixels_and_zero_the_padding():
    batch = PadCollate(size_divisor=4)([sample(1, 2, 2, 255)])
    images, mask = batch.inputs()
    for channel in range(3):
        expected = (1.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        torch.testing.assert_close(images[0, channel, :2, :2], torch.full((2, 2), expected))
        assert (images[0, channel, 2:] == 0).all() and (images[0, channel, :, 2:] == 0).all()
    assert mask is batch.padding_mask


def test_size_divisor_must_be_positive():
    with pytest.raises(ValueError, match="size_divisor must be >= 1"):
        PadCollate(size_divisor=0)
