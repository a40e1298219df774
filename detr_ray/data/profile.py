"""What a COCO dataset is, in the numbers a detector's recipe depends on.

Read from the annotation file alone (no image is opened): images,
annotations and categories; objects per image; the empty and crowd shares;
object sizes (the square root of the box's area, in pixels) at the source
size, at a training scale, and in cells of each model family's finest
feature map; aspect ratios; class counts and their imbalance. The boxes are
the training targets (:func:`~detr_ray.data.annotations.clean_box`: clipped
to the image, invalid ones left out), crowd regions counted apart.

Pure (no torch): ``detr-ray data profile``, the warnings at training start
and ``detr-ray recipe`` read it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

from detr_ray.data.annotations import clean_box
from detr_ray.data.sizes import resized_hw


@dataclass(frozen=True)
class Quantiles:
    """``min``, ``p5``, ``p50``, ``p95``, ``p99``, ``max`` of a sample (0 if empty)."""

    min: float
    p5: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Quantiles:
        if not values:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(values)
        return cls(*(percentile(ordered, q) for q in (0, 5, 50, 95, 99, 100)))

    def scaled(self, factor: float) -> Quantiles:
        return Quantiles(*(v * factor for v in asdict(self).values()))


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted values, linear between neighbours (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class DatasetProfile:
    """The numbers of one annotation file (see the module doc).

    Object sizes are ``sqrt(w * h)`` of the training boxes, in pixels:
    ``object_size`` at the source size, ``object_size_at_scale`` after each
    image is resized as training would (short side ``scale``, long side at
    most ``max_size``; equal to the source without a scale). ``small_share``
    is the share of objects below 32 px at that scale (COCO's "small").
    """

    images: int
    annotations: int
    categories: int
    objects_per_image: Quantiles
    empty_share: float
    crowd_share: float
    invalid_boxes: int
    object_size: Quantiles
    object_size_at_scale: Quantiles
    scale: int | None
    max_size: int | None
    small_share: float
    aspect_ratio: Quantiles  # width / height
    image_size: Quantiles  # the source images' short side
    class_counts: dict[str, int] = field(default_factory=dict)  # "<id>_<name>": objects
    per_image_counts: tuple[int, ...] = ()  # objects of each image, in file order

    @property
    def imbalance(self) -> float:
        """The most common class's count over the rarest's (inf if a class has none)."""
        counts = list(self.class_counts.values())
        if not counts or max(counts) == 0:
            return 1.0
        return max(counts) / min(counts) if min(counts) > 0 else math.inf

    def cells(self, stride: int) -> Quantiles:
        """Object sizes at the training scale in cells of a feature map of ``stride``."""
        return self.object_size_at_scale.scaled(1 / stride)

    def images_over(self, num_queries: int) -> int:
        """How many images hold more objects than ``num_queries``."""
        return sum(1 for n in self.per_image_counts if n > num_queries)

    def rare_classes(self, below: int) -> dict[str, int]:
        """The classes with fewer than ``below`` objects, and their counts."""
        return {name: n for name, n in self.class_counts.items() if n < below}

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("per_image_counts")
        data["imbalance"] = self.imbalance if math.isfinite(self.imbalance) else None
        return data


def profile_coco(
    data: dict, scale: int | None = None, max_size: int | None = None
) -> DatasetProfile:
    """Profile a COCO dict (as :func:`~detr_ray.data.annotations.load_coco_json` returns it).

    Args:
        scale: the training images' short side, or ``None`` for the source size.
        max_size: the training images' long-side limit (with ``scale``).
    """
    images = {img["id"]: img for img in data["images"]}
    names = {cat["id"]: str(cat["name"]) for cat in data["categories"]}
    per_image: Counter = Counter()
    class_counts: Counter = Counter({cat_id: 0 for cat_id in names})
    sizes, sizes_at_scale, ratios = [], [], []
    crowd = invalid = 0
    factors = {}
    for image_id, img in images.items():
        height, width = int(img["height"]), int(img["width"])
        if scale is None:
            factors[image_id] = 1.0
        else:
            new_h, _ = resized_hw(height, width, scale, max_size)
            factors[image_id] = new_h / height
    for ann in data["annotations"]:
        img = images[ann["image_id"]]
        box, _ = clean_box(ann["bbox"], int(img["width"]), int(img["height"]))
        if box is None:
            invalid += 1
            continue
        if ann.get("iscrowd"):
            crowd += 1
            continue
        w, h = box[2] - box[0], box[3] - box[1]
        size = math.sqrt(w * h)
        sizes.append(size)
        sizes_at_scale.append(size * factors[ann["image_id"]])
        ratios.append(w / h)
        per_image[ann["image_id"]] += 1
        class_counts[ann["category_id"]] += 1
    counts = [per_image.get(image_id, 0) for image_id in images]
    objects = len(sizes)
    short_sides = [float(min(int(img["width"]), int(img["height"]))) for img in images.values()]
    return DatasetProfile(
        images=len(images),
        annotations=len(data["annotations"]),
        categories=len(names),
        objects_per_image=Quantiles.of([float(n) for n in counts]),
        empty_share=sum(1 for n in counts if n == 0) / max(len(counts), 1),
        crowd_share=crowd / max(objects + crowd, 1),
        invalid_boxes=invalid,
        object_size=Quantiles.of(sizes),
        object_size_at_scale=Quantiles.of(sizes_at_scale),
        scale=scale,
        max_size=max_size,
        small_share=sum(1 for s in sizes_at_scale if s < 32) / max(objects, 1),
        aspect_ratio=Quantiles.of(ratios),
        image_size=Quantiles.of(short_sides),
        class_counts={f"{cat_id}_{names[cat_id]}": n for cat_id, n in sorted(class_counts.items())},
        per_image_counts=tuple(counts),
    )


# The finest feature map of each model family, in pixels per cell: DETR reads
# layer4 (stride 32; 16 with a 3-stage backbone or DC5), Deformable DETR
# starts at layer2 (stride 8).
FINEST_STRIDE = {"DETR": 32, "DETR, 3 stages or DC5": 16, "Deformable DETR": 8}


def format_profile(profile: DatasetProfile, name: str = "") -> str:
    """The profile as a terminal table."""

    def row(label: str, q: Quantiles, digits: int = 1) -> str:
        cells = "  ".join(f"{v:>7.{digits}f}" for v in (q.min, q.p5, q.p50, q.p95, q.p99, q.max))
        return f"  {label:<38} {cells}"

    at = (
        f"at the training scale (short side {profile.scale}"
        + (f", long side <= {profile.max_size}" if profile.max_size else "")
        + ")"
        if profile.scale
        else "at the source size (no --scale)"
    )
    lines = [
        f"dataset {name}".rstrip(),
        f"  {profile.images} images, {profile.annotations} annotations, "
        f"{profile.categories} categories; {profile.invalid_boxes} invalid boxes left out",
        f"  empty images {profile.empty_share:.1%}, crowd objects {profile.crowd_share:.1%}, "
        f"small objects (< 32 px {at.split(' (')[0]}) {profile.small_share:.1%}",
        f"  {'':<38} {'min':>7}  {'p5':>7}  {'p50':>7}  {'p95':>7}  {'p99':>7}  {'max':>7}",
        row("objects per image", profile.objects_per_image, 0),
        row("image short side (px)", profile.image_size, 0),
        row("object size, source (px)", profile.object_size),
        row("object size, training scale (px)", profile.object_size_at_scale),
    ]
    for family, stride in FINEST_STRIDE.items():
        lines.append(row(f"  in cells, {family} ({stride} px)", profile.cells(stride), 2))
    lines.append(row("aspect ratio (w / h)", profile.aspect_ratio, 2))
    imbalance = profile.imbalance
    ratio = f"{imbalance:.1f}x" if math.isfinite(imbalance) else "inf (a class has no object)"
    classes = ", ".join(f"{k} {v}" for k, v in profile.class_counts.items())
    lines.append(f"  classes: {classes}; imbalance {ratio}")
    lines.append(f"  object sizes {at}")
    return "\n".join(lines)
