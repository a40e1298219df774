"""The rules of ``detr-ray recipe``: from a dataset's profile and a timed probe to a config.

Each rule is general (none names a dataset) and each choice keeps the sentence
that explains it, which the written config carries as a comment:

- **scale**: for each model family, the smallest input size (short side, from
  :data:`SCALES`) at which the median training object covers at least one cell
  of the family's finest feature map, upsampling at most 2x; a size at which
  half the objects fall between cells teaches the model little about them.
- **family**: DETR when it needs no larger input than Deformable DETR (the
  objects are large enough for its coarser map): its steps are cheaper and
  its dense auxiliary head converges within a few epochs on such data.
  Otherwise Deformable DETR, whose finest level has 4x smaller cells (2x per
  side at the same input), so it reaches small objects at a smaller input.
- **queries**: 1.5x the 99th percentile of objects per image, at least 5:
  an object beyond the queries can never be matched.
- **batch and learning rate**: on a CPU 8 images per worker for DETR and 4
  for Deformable DETR (twice the updates in the few epochs a CPU budget
  holds: on glyphs it trained 12% slower and learned more per epoch, and
  more in the same minutes; BENCHMARKS.md), 4 on a GPU;
  AdamW for a global batch of 16 at 2e-4 for the ResNet-50 models and at
  6e-4 for the small models (a few epochs of a 2+2-layer, 128-wide
  transformer: 3x the rate learned faster on both sets it was tried on,
  BENCHMARKS.md), scaled with the square root of the global batch (DETR's
  authors advise against linear scaling). From scratch the backbone learns
  at the same rate; fine-tuning keeps the model's rate for the rest (its
  class head and extra queries start new) and gives the pretrained backbone
  a tenth of it, the reference's convention. Fine-tuning glyphs from the
  swarm for 10 minutes, this learned the most of five rules; on both pairs
  (glyphs from the swarm, the swarm from glyphs) it learned more than from
  scratch (BENCHMARKS.md, "Fine-tuning at the model's rate").
- **epochs**: what the probed speed trains in the budget, less the
  evaluations; the run stops at the budget (``train.time_budget_minutes``),
  with the learning rate dropped at 80% of it.
- **augmentation**: DETR's flips at the chosen size; with many epochs (10 or
  more: each image seen often) also its multi-scale resize and crops.
- **dense head**: on when training from scratch (weight 4 for DETR, 2 for
  Deformable DETR, whose focal loss weighs its classes twice), off when
  fine-tuning (with it, fine-tuning learned less on glyphs and ran 15%
  slower on the swarm; BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from detr_ray.config.model import ModelConfig, preset_config
from detr_ray.data.profile import DatasetProfile, profile_coco
from detr_ray.errors import ConfigError
from detr_ray.train.data_fit import finest_stride

SCALES = (64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 800)
MAX_UPSAMPLE = 2.0
REFERENCE_BATCH, REFERENCE_LR = 16, 2e-4
SMALL_MODEL_LR = 6e-4  # the CPU presets from scratch, for REFERENCE_BATCH images
LR_DROP_AT = 0.8  # of the budget
MANY_EPOCHS = 10
EVALUATIONS = 4  # during training, besides the final one


@dataclass
class Choice:
    """A value the recipe chose and why."""

    value: object
    why: str


@dataclass(frozen=True)
class Candidate:
    """A model family at the input size the data asks of it."""

    family: str
    model: ModelConfig  # num_classes unset
    scale: int
    why_scale: str

    @property
    def max_size(self) -> int:
        return max_size_for(self.scale)


def max_size_for(scale: int) -> int:
    """The long-side limit that goes with a short side (DETR's 800 / 1333)."""
    return int(round(scale * 1333 / 800))


def family_models(gpu: bool) -> dict[str, ModelConfig]:
    """The model of each family the recipe trains: on a GPU the official
    ResNet-50 models; on CPUs the small presets with a 3-stage ResNet-18 trunk
    (DETR: stride 16, pre-norm, no dropout, the demo's; Deformable DETR: the
    maps of layer2 and layer3, strides 8 and 16, then two stride-2 levels, no
    dropout). Without layer4 (three quarters of ResNet-18's weights) a
    Deformable step is faster and its gradients' all-reduce smaller, and from
    scratch it learned as much per epoch (BENCHMARKS.md)."""
    if gpu:
        return {
            "detr": preset_config("detr_r50"),
            "deformable_detr": preset_config("deformable_detr_r50"),
        }
    return {
        "detr": preset_config("detr_r18_small", backbone_stages=3, pre_norm=True, dropout=0.0),
        "deformable_detr": preset_config(
            "deformable_detr_r18_small", backbone_stages=3, dropout=0.0
        ),
    }


def scale_for(data: dict, source: DatasetProfile, stride: int) -> tuple[int, str]:
    """The smallest of :data:`SCALES` whose median object covers a ``stride``-pixel cell."""
    cap = max(SCALES[0], source.image_size.p50 * MAX_UPSAMPLE)
    median = 0.0
    chosen = SCALES[0]
    for scale in SCALES:
        if scale > cap:
            break
        chosen = scale
        median = profile_coco(data, scale, max_size_for(scale)).object_size_at_scale.p50
        if median >= stride:
            return scale, (
                f"the smallest input (short side) at which the median object, {median:.0f} px, "
                f"covers a {stride}-px cell of the finest feature map"
            )
    return chosen, (
        f"even at {chosen} px ({MAX_UPSAMPLE:g}x the median image) the median object is "
        f"{median:.0f} px, under one {stride}-px cell: the largest input allowed"
    )


def candidates(data: dict, source: DatasetProfile, gpu: bool) -> list[Candidate]:
    """Each family at its scale (see :func:`scale_for`)."""
    found = []
    for family, model in family_models(gpu).items():
        scale, why = scale_for(data, source, finest_stride(model))
        found.append(Candidate(family, model, scale, why))
    return found


def choose_family(options: list[Candidate]) -> tuple[Candidate, str]:
    """DETR when it needs no larger input than Deformable DETR, else Deformable DETR."""
    by_family = {c.family: c for c in options}
    detr, deformable = by_family["detr"], by_family["deformable_detr"]
    if detr.scale <= deformable.scale:
        return detr, (
            f"DETR: its coarser map already covers the median object at {detr.scale} px, "
            "the input Deformable DETR would need too, and its steps cost less"
        )
    return deformable, (
        f"Deformable DETR: its 8-px cells cover the median object at {deformable.scale} px, "
        f"where DETR would need {detr.scale} px"
    )


@dataclass
class Plan:
    """Everything the recipe chose (each with its reason)."""

    choices: dict[str, Choice] = field(default_factory=dict)

    def set(self, key: str, value: object, why: str) -> None:
        self.choices[key] = Choice(value, why)

    def value(self, key: str) -> object:
        return self.choices[key].value


def queries_for(profile: DatasetProfile) -> tuple[int, str]:
    p99 = profile.objects_per_image.p99
    queries = max(5, math.ceil(1.5 * p99))
    return queries, (
        f"1.5x the 99th percentile of objects per image ({p99:.0f}; the most is "
        f"{profile.objects_per_image.max:.0f}): every object needs a query"
    )


def small_model(model: ModelConfig) -> bool:
    """Narrower than the reference's 256 channels: the CPU presets' size
    (:func:`family_models`), which learns faster at 3x the reference's rate."""
    return model.d_model < 256


def batch_and_lr(
    gpu: bool, workers: int, fine_tune: bool, *, deformable: bool, small: bool
) -> tuple[int, float, float, str]:
    """Images per worker, AdamW's learning rate and the backbone's, with why.

    ``small``: the model is one of the small ones (:func:`small_model`).
    """
    batch = 4 if gpu or deformable else 8
    global_batch = batch * workers
    base = SMALL_MODEL_LR if small else REFERENCE_LR
    lr = base * math.sqrt(global_batch / REFERENCE_BATCH)
    backbone_lr = lr * (0.1 if fine_tune else 1.0)
    why = (
        f"{batch} images a worker"
        + (
            " (Deformable DETR on a CPU: twice the updates an epoch)"
            if deformable and not gpu
            else ""
        )
        + f" x {workers} worker(s) = {global_batch}; AdamW at "
        f"{base:g} for {REFERENCE_BATCH} images"
        + (f" (a small model: 3x the {REFERENCE_LR:g} of the large ones)" if small else "")
        + f", times sqrt({global_batch}/{REFERENCE_BATCH})"
        + (
            "; the pretrained backbone at a tenth of it (the reference's fine-tuning)"
            if fine_tune
            else ""
        )
    )
    return batch, lr, backbone_lr, why


def epochs_for(
    budget_minutes: float, images_per_s: float, train_images: int, eval_s: float
) -> tuple[float, str]:
    """Epochs the budget trains at the probed speed (the evaluations' time left out).

    Raises:
        ConfigError: not even one epoch fits; names the numbers and what to change.
    """
    seconds = budget_minutes * 60
    usable = seconds - (EVALUATIONS + 1) * eval_s
    epochs = usable * images_per_s / train_images
    if epochs < 1:
        needed = (train_images / images_per_s + (EVALUATIONS + 1) * eval_s) / 60
        raise ConfigError(
            f"--budget-minutes {budget_minutes:g} trains about {max(usable, 0) * images_per_s:.0f} "
            f"images at the probed {images_per_s:.1f} images/s, less than one epoch of "
            f"{train_images}: give at least {math.ceil(needed)} minutes, more workers "
            "(--num-workers, --gpu), or a smaller training set"
        )
    return epochs, (
        f"{budget_minutes:g} min at the probed {images_per_s:.1f} images/s, less "
        f"{EVALUATIONS + 1} evaluations of about {eval_s:.0f} s: {epochs:.1f} epochs of "
        f"{train_images} images"
    )
