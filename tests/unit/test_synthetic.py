import hashlib
import json

import numpy as np
import torch
from PIL import Image

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.synthetic import CATEGORIES, generate
from detr_ray.data.transforms import build_transforms


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = generate(tmp_path / "a", num_train=6, num_val=2, size=64, seed=3)
    b = generate(tmp_path / "b", num_train=6, num_val=2, size=64, seed=3)
    c = generate(tmp_path / "c", num_train=6, num_val=2, size=64, seed=4)
    assert _digest(a.root) == _digest(b.root) != _digest(c.root)


def test_dataset_has_the_promised_variety(tmp_path):
    data = generate(tmp_path, num_train=80, num_val=4, size=96, seed=0)
    coco = json.loads(data.train_ann.read_text())
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=80)
    assert (per_image == 0).any() and (per_image >= 2).any()
    assert {a["category_id"] for a in coco["annotations"]} == {c["id"] for c in CATEGORIES}
    sizes = {(img["width"], img["height"]) for img in coco["images"]}
    assert len(sizes) > 10 and all(max(s) == 96 for s in sizes)
    widths = [a["bbox"][2] for a in coco["annotations"]]
    assert min(widths) < 0.5 * max(widths)  # varied sizes


def test_boxes_are_the_exact_extent_of_the_drawn_pixels(tmp_path):
    # For images with one shape, the pixels far from the background colour
    # are exactly the shape: their bounding box must be the annotation.
    data = generate(tmp_path, num_train=40, num_val=2, size=96, seed=1)
    coco = json.loads(data.train_ann.read_text())
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    checked = 0
    for img in coco["images"]:
        anns = by_image.get(img["id"], [])
        if len(anns) != 1:
            continue
        pixels = np.asarray(Image.open(data.train_images / img["file_name"])).astype(int)
        background = np.median(pixels.reshape(-1, 3), axis=0)  # the shape covers < 25%
        far = np.abs(pixels - background).sum(-1) > 100
        ys, xs = np.nonzero(far)
        x, y, w, h = anns[0]["bbox"]
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [
            x,
            y,
            w,
            h,
        ]
        checked += 1
    assert checked >= 5


def test_boxes_round_trip_through_the_validation_transform(tmp_path):
    data = generate(tmp_path, num_train=2, num_val=12, size=80, seed=2)
    config = AugmentationConfig(train_scales=(64,), max_size=200, val_scale=120)
    dataset = CocoDetection(data.val_ann, data.val_images, build_transforms(config, train=False))
    coco = json.loads(data.val_ann.read_text())
    for index in range(len(dataset)):
        image, target = dataset[index]
        h, w = target["size"]
        assert image.shape == (3, h, w) and min(h, w) == 120
        orig_h, orig_w = target["orig_size"]
        cx, cy, bw, bh = target["boxes"].unbind(-1)
        scale = torch.tensor([orig_w, orig_h, orig_w, orig_h])
        back = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * scale
        expected = [a for a in coco["annotations"] if a["image_id"] == target["image_id"]]
        expected_xyxy = torch.tensor(
            [[x, y, x + bw_, y + bh_] for x, y, bw_, bh_ in (a["bbox"] for a in expected)],
            dtype=torch.float32,
        ).reshape(-1, 4)
        torch.testing.assert_close(back, expected_xyxy, atol=1e-3, rtol=0)
        labels = [dataset.label_map.category_id(int(l)) for l in target["labels"]]
        assert labels == [a["category_id"] for a in expected]


def test_glyphs_are_a_second_kind_of_dataset(tmp_path):
    from detr_ray.data.glyphs import GLYPH_CATEGORIES, MAX_HEIGHT, MAX_OBJECTS, MIN_HEIGHT

    data = generate(tmp_path / "g", num_train=30, num_val=2, size=128, seed=5, kind="glyphs")
    again = generate(tmp_path / "h", num_train=30, num_val=2, size=128, seed=5, kind="glyphs")
    assert data.train_ann.read_text() == again.train_ann.read_text()  # deterministic
    coco = json.loads(data.train_ann.read_text())
    assert len(coco["categories"]) == len(GLYPH_CATEGORIES) == 12
    per_image = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert MIN_HEIGHT <= h <= MAX_HEIGHT and w > 0
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        image = np.asarray(Image.open(data.train_images / f"{ann['image_id']:06d}.png"))
        assert x + w <= image.shape[1] and y + h <= image.shape[0]
    assert max(per_image.values()) <= MAX_OBJECTS
    assert len({a["category_id"] for a in coco["annotations"]}) >= 10  # most classes appear


def test_swarms_are_a_third_kind_of_dataset(tmp_path):
    from detr_ray.data.swarm import MAX_OBJECTS, MIN_OBJECTS, SWARM_CATEGORIES

    data = generate(tmp_path / "s", num_train=40, num_val=2, size=160, seed=7, kind="swarm")
    again = generate(tmp_path / "t", num_train=40, num_val=2, size=160, seed=7, kind="swarm")
    assert data.train_ann.read_text() == again.train_ann.read_text()  # deterministic
    coco = json.loads(data.train_ann.read_text())
    assert len(coco["categories"]) == len(SWARM_CATEGORIES) == 24
    per_image, per_class, ratios = {}, {}, []
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        per_class[ann["category_id"]] = per_class.get(ann["category_id"], 0) + 1
        ratios.append(w / h)
        assert max(w, h) <= 31 and x >= 0 and y >= 0  # small
    counts = list(per_image.values())
    # crowded: at least 20 tried per image, a few may find no room
    assert min(counts) >= MIN_OBJECTS * 0.8 and max(counts) <= MAX_OBJECTS
    assert max(ratios) >= 3 and min(ratios) <= 1 / 3  # bars lying and standing
    # long-tailed: the red forms (first) are several times the blue ones (last)
    red = sum(per_class.get(c["id"], 0) for c in SWARM_CATEGORIES[:8])
    blue = sum(per_class.get(c["id"], 0) for c in SWARM_CATEGORIES[16:])
    assert red > 3 * blue > 0
    shapes = {(img["width"], img["height"]) for img in coco["images"]}
    assert len(shapes) > 10 and min(min(s) for s in shapes) < 110  # varied, some narrow
