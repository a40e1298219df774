"""A second generated dataset, unlike the shapes: small glyphs on cluttered backgrounds.

Twelve categories (the digits and two letters), told apart by their inner
structure (strokes, holes), not by an outline alone; each object is 10-50
pixels tall, drawn in one of several fonts' weights, solid or striped, in
colours that often resemble the background; up to 8 per image; the
background is noise with random lines and blotches in the objects' colours.
A recipe tuned on the shapes (three large, plain outlines) meets small
objects, more classes and clutter here: ``detr-ray data synth --kind glyphs``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GLYPHS = "0123456789AK"
GLYPH_CATEGORIES = tuple(
    {"id": 10 + i, "name": f"glyph {c}", "supercategory": "glyph"} for i, c in enumerate(GLYPHS)
)
MIN_HEIGHT, MAX_HEIGHT = 10, 50  # object height in pixels
MAX_OBJECTS = 8


def draw_glyph_image(rng: np.random.Generator, size: int, empty_fraction: float = 0.05):
    """One image (long side ``size``) and its ``(category_id, [x, y, w, h], area)`` boxes."""
    short = int(rng.integers(size * 3 // 4, size + 1))
    width, height = (size, short) if rng.random() < 0.5 else (short, size)
    image = _clutter(rng, width, height)
    count = 0 if rng.random() < empty_fraction else int(rng.integers(1, MAX_OBJECTS + 1))
    placed: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(count):
        index = int(rng.integers(len(GLYPHS)))
        drawn = _place_glyph(rng, GLYPHS[index], width, height, placed)
        if drawn is None:
            continue
        mask, box = drawn
        x1, y1, x2, y2 = box
        fill = _fill(rng, width, height)
        image.paste(fill, mask=mask)
        placed.append(box)
        area = int(np.count_nonzero(np.asarray(mask)))
        boxes.append((GLYPH_CATEGORIES[index]["id"], [x1, y1, x2 - x1, y2 - y1], area))
    return image, boxes


def _clutter(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    base = rng.integers(30, 226, size=3)
    noise = rng.normal(0, 18, size=(height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # lines and blotches, object-like colours
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x1, y1 = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            x2, y2 = rng.uniform(0, width), rng.uniform(0, height)
            draw.line((x1, y1, x2, y2), fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(2, 6)
            draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=colour)
    return image


def _place_glyph(rng, glyph: str, width: int, height: int, placed):
    """``(mask, (x1, y1, x2, y2))`` of one glyph that overlaps no earlier box much."""
    for _ in range(20):
        target = rng.uniform(MIN_HEIGHT, MAX_HEIGHT)
        font = ImageFont.load_default(size=max(8, int(target * 1.45)))
        stroke = int(rng.integers(0, 2 + int(target // 25)))  # bolder at larger sizes
        left, top, right, bottom = font.getbbox(glyph, stroke_width=stroke)
        w, h = right - left, bottom - top
        if w >= width or h >= height:
            continue
        x = int(rng.integers(0, width - w)) - left
        y = int(rng.integers(0, height - h)) - top
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).text(
            (x, y), glyph, font=font, fill=255, stroke_width=stroke, stroke_fill=255
        )
        found = mask.getbbox()
        if found is None:
            continue
        box = (int(found[0]), int(found[1]), int(found[2]), int(found[3]))
        if not MIN_HEIGHT <= box[3] - box[1] <= MAX_HEIGHT:
            continue
        if all(box_iou(box, other) <= 0.1 for other in placed):
            return mask, box
    return None


def _fill(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Solid or striped colour for a glyph (its style is not part of its category)."""
    first = rng.integers(0, 256, size=3)
    pixels = np.broadcast_to(first, (height, width, 3)).copy()
    if rng.random() < 0.4:
        second = rng.integers(0, 256, size=3)
        period = int(rng.integers(2, 5))
        rows = (np.arange(height)[:, None] + np.arange(width)[None, :]) // period % 2 == 1
        pixels[rows] = second
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def box_iou(a, b) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes (plain numbers): how the generated
    sets keep their objects apart."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
