"""The augmentation config (pure): its checks and the scaled recipe."""

import pytest

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.errors import ConfigError


def test_bad_config_values_are_named():
    with pytest.raises(ConfigError, match=r"crop_prob must be in \[0, 1\], got 1.5"):
        AugmentationConfig(crop_prob=1.5)
    with pytest.raises(ConfigError, match="crop_size must be .min, max. with 0 < min <= max"):
        AugmentationConfig(crop_size=(600, 384))
    with pytest.raises(ConfigError, match="train_scales must be a non-empty list"):
        AugmentationConfig(train_scales=())


def test_scaled_recipe():
    assert AugmentationConfig.scaled(800, step=1) == AugmentationConfig()
    small = AugmentationConfig.scaled(128)
    assert small.val_scale == 128 and small.max_size == 213
    assert small.train_scales == (80, 88, 96, 104, 112, 120, 128)  # 480..800 * 0.16, step 8
    assert small.crop_size == (64, 96)  # 384 * 0.16 = 61.4 -> 64; 600 * 0.16 = 96
