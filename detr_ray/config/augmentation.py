"""The sizes and probabilities of DETR's augmentation. Pure: no torch.

:mod:`detr_ray.data.transforms` builds the pipelines this describes; the
config travels in every checkpoint (the validation scale is part of a model).
"""

from __future__ import annotations

from dataclasses import dataclass

from detr_ray.schema import require


@dataclass(frozen=True)
class AugmentationConfig:
    """Scales of DETR's augmentation; the defaults are the official COCO recipe.

    Training: horizontal flip; then either a multi-scale resize of the short
    side to one of ``train_scales`` (long side at most ``max_size``), or, with
    probability ``crop_prob``, a resize to one of ``crop_resize_scales``, a
    random crop with sides in ``crop_size``, then the same multi-scale resize.
    Validation: short side ``val_scale``, long side at most ``max_size``.
    """

    train_scales: tuple[int, ...] = tuple(range(480, 801, 32))
    max_size: int = 1333
    crop_prob: float = 0.5
    crop_resize_scales: tuple[int, ...] = (400, 500, 600)
    crop_size: tuple[int, int] = (384, 600)
    flip_prob: float = 0.5
    val_scale: int = 800

    def __post_init__(self):
        require(
            bool(self.train_scales) and min(self.train_scales) > 0,
            "train_scales",
            self.train_scales,
            "a non-empty list of positive sizes",
        )
        require(
            bool(self.crop_resize_scales) and min(self.crop_resize_scales) > 0,
            "crop_resize_scales",
            self.crop_resize_scales,
            "a non-empty list of positive sizes",
        )
        require(self.max_size > 0, "max_size", self.max_size, "> 0")
        require(self.val_scale > 0, "val_scale", self.val_scale, "> 0")
        require(0 <= self.crop_prob <= 1, "crop_prob", self.crop_prob, "in [0, 1]")
        require(0 <= self.flip_prob <= 1, "flip_prob", self.flip_prob, "in [0, 1]")
        require(
            len(self.crop_size) == 2 and 0 < self.crop_size[0] <= self.crop_size[1],
            "crop_size",
            self.crop_size,
            "[min, max] with 0 < min <= max",
        )

    @classmethod
    def scaled(cls, val_scale: int, step: int = 8) -> AugmentationConfig:
        """The official recipe shrunk (or grown) so its validation scale is
        ``val_scale``: every size times ``val_scale / 800``, rounded to ``step``."""
        factor = val_scale / 800

        def size(value: float) -> int:
            return max(step, int(round(value * factor / step)) * step)

        default = cls()
        return cls(
            train_scales=tuple(sorted({size(s) for s in default.train_scales})),
            max_size=int(round(default.max_size * factor)),
            crop_resize_scales=tuple(size(s) for s in default.crop_resize_scales),
            crop_size=(size(default.crop_size[0]), size(default.crop_size[1])),
            val_scale=val_scale,
        )
