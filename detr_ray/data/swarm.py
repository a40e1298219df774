"""A third generated dataset, unlike the shapes and the glyphs: swarms of small parts.

What differs from both (``detr-ray data synth --kind swarm``):

- many objects per image, 20 to 60 (the shapes: up to 4, the glyphs: 8);
- 24 categories, eight forms in three colours, with a long-tailed frequency:
  the most common category is about 20 times as frequent as the rarest;
- elongated boxes: bars lying and standing (aspect 1:3 to 1:6) beside
  squares, discs, rings, crosses, triangles and diamonds;
- small objects, 6 to 24 pixels across (bars up to 30 long);
- textured backgrounds (stripes, checks or smooth gradients under noise);
- images of varied sizes and shapes: the long side ``size``, the short side
  from half of it to all of it, either way round.

A category is its form *and* its colour, so colour matters here (it never
does for the shapes or the glyphs).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from detr_ray.data.glyphs import box_iou

FORMS = ("square", "disc", "ring", "cross", "triangle", "diamond", "bar lying", "bar standing")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 70), "blue": (40, 90, 230)}
SWARM_CATEGORIES = tuple(
    {"id": 100 + i, "name": f"{colour} {form}", "supercategory": form}
    for i, (colour, form) in enumerate((c, f) for c in COLOURS for f in FORMS)
)
# A long tail: category i is drawn with weight 1 / (1 + i / 1.2) (a ~20:1 ratio);
# every form is common in red and rare in blue.
_WEIGHTS = np.array([1.0 / (1 + i / 1.2) for i in range(len(SWARM_CATEGORIES))])
WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
MIN_OBJECTS, MAX_OBJECTS = 20, 60
MIN_SIZE, MAX_SIZE = 6, 24  # pixels across (a bar's short side is a third to a sixth of it)


def draw_swarm_image(rng: np.random.Generator, size: int):
    """One image (long side ``size``) and its ``(category_id, [x, y, w, h], area)`` boxes."""
    short = int(rng.integers(size // 2, size + 1))
    width, height = (size, short) if rng.random() < 0.5 else (short, size)
    image = _texture(rng, width, height)
    draw = ImageDraw.Draw(image)
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    placed: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(count):
        category = SWARM_CATEGORIES[int(rng.choice(len(SWARM_CATEGORIES), p=WEIGHTS))]
        form, colour = _form_and_colour(category)
        box = _place(rng, form, width, height, placed)
        if box is None:
            continue
        mask = Image.new("L", (width, height), 0)
        _draw_form(ImageDraw.Draw(mask), form, box)
        found = mask.getbbox()
        if found is None:
            continue
        tint = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[colour])
        draw.bitmap((0, 0), mask, fill=tint)
        x1, y1, x2, y2 = (int(v) for v in found)
        placed.append((x1, y1, x2, y2))
        area = int(np.count_nonzero(np.asarray(mask)))
        boxes.append((category["id"], [x1, y1, x2 - x1, y2 - y1], area))
    return image, boxes


def _form_and_colour(category: dict) -> tuple[str, str]:
    colour, form = str(category["name"]).split(" ", 1)
    return form, colour


def _texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Stripes, checks or a gradient in two greyish colours, under noise."""
    a, b = rng.integers(60, 200, size=3), rng.integers(60, 200, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    kind = int(rng.integers(3))
    period = int(rng.integers(4, 12))
    if kind == 0:  # stripes at an angle
        angle = rng.uniform(0, np.pi)
        t = ((xs * np.cos(angle) + ys * np.sin(angle)) // period % 2).astype(float)
    elif kind == 1:  # checks
        t = ((xs // period + ys // period) % 2).astype(float)
    else:  # a smooth gradient
        t = (xs / max(width - 1, 1) + ys / max(height - 1, 1)) / 2
    pixels = a + (b - a) * t[..., None] + rng.normal(0, 10, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _place(rng, form: str, width: int, height: int, placed):
    """A box for one object that overlaps earlier ones little (None if no room)."""
    for _ in range(15):
        side = rng.uniform(MIN_SIZE, MAX_SIZE)
        if form.startswith("bar"):
            long_side, thin = side * 1.25, side * 1.25 / rng.uniform(3, 6)
            w, h = (long_side, thin) if form == "bar lying" else (thin, long_side)
        else:
            w = h = side
        if w >= width - 1 or h >= height - 1:
            continue
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        box = (int(x1), int(y1), int(x1 + w), int(y1 + h))
        if box[2] - box[0] < 2 or box[3] - box[1] < 2:
            continue
        if all(box_iou(box, other) <= 0.05 for other in placed):
            return box
    return None


def _draw_form(draw: ImageDraw.ImageDraw, form: str, box) -> None:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if form in ("square", "bar lying", "bar standing"):
        draw.rectangle(box, fill=255)
    elif form == "disc":
        draw.ellipse(box, fill=255)
    elif form == "ring":
        width = max(1, int((x2 - x1) / 4))
        draw.ellipse(box, outline=255, width=width)
    elif form == "cross":
        arm = max(1, int((x2 - x1) / 4))
        draw.rectangle((cx - arm, y1, cx + arm, y2), fill=255)
        draw.rectangle((x1, cy - arm, x2, cy + arm), fill=255)
    elif form == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=255)
    else:  # diamond
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=255)
