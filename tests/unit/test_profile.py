"""``detr-ray data profile``: a dataset's numbers, worked out by hand on a tiny file."""

from __future__ import annotations

import json
import math

import pytest

from detr_ray.cli import main
from detr_ray.data.annotations import load_coco_json
from detr_ray.data.profile import percentile, profile_coco


def _file(tmp_path):
    """Three images: 200 x 100 with boxes of 10 x 10 and 20 x 80 (crowd: a 5 x 5),
    100 x 100 with a 40 x 10 box and one that is outside the image, 50 x 50 empty."""
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 100},
            {"id": 3, "file_name": "c.png", "width": 50, "height": 50},
        ],
        "categories": [
            {"id": 7, "name": "cat"},
            {"id": 9, "name": "dog"},
            {"id": 11, "name": "owl"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 10, 20, 80]},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [10, 10, 40, 10]},
            {"id": 5, "image_id": 2, "category_id": 9, "bbox": [150, 150, 10, 10]},
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    (tmp_path / "images").mkdir()
    return path


def test_the_numbers_by_hand(tmp_path):
    profile = profile_coco(load_coco_json(_file(tmp_path)))
    assert (profile.images, profile.annotations, profile.categories) == (3, 5, 3)
    assert profile.invalid_boxes == 1  # the box outside image 2
    assert profile.per_image_counts == (2, 1, 0)  # the crowd region is not an object
    assert profile.empty_share == pytest.approx(1 / 3)
    assert profile.crowd_share == pytest.approx(1 / 4)  # 1 crowd of 3 objects + 1 crowd
    # sizes sqrt(w h): 10, 40 (20 x 80), 20 (40 x 10); sorted 10, 20, 40
    assert profile.object_size.min == 10 and profile.object_size.max == 40
    assert profile.object_size.p50 == pytest.approx(20)
    assert profile.object_size.p5 == pytest.approx(10 + 0.1 * 10)  # 5% of the way to 20
    assert profile.aspect_ratio.min == pytest.approx(0.25) and profile.aspect_ratio.max == 4
    assert profile.class_counts == {"7_cat": 2, "9_dog": 1, "11_owl": 0}
    assert math.isinf(profile.imbalance)  # the owl has no object
    assert profile.rare_classes(2) == {"9_dog": 1, "11_owl": 0}
    assert profile.images_over(1) == 1 and profile.images_over(2) == 0
    assert profile.small_share == pytest.approx(2 / 3)  # 10 and 20 are under 32 px


def test_at_a_training_scale_and_in_cells(tmp_path):
    # short side 50: image 1 (200 x 100) halves, image 2 (100 x 100) halves too;
    # with max_size 80 image 1's long side 200 -> 80: a factor 0.4
    profile = profile_coco(load_coco_json(_file(tmp_path)), scale=50, max_size=80)
    assert sorted([10 * 0.4, 40 * 0.4, 20 * 0.5]) == pytest.approx(
        [profile.object_size_at_scale.min, profile.object_size_at_scale.p50, 16.0]
    )
    assert profile.object_size_at_scale.max == pytest.approx(16)
    assert profile.cells(8).max == pytest.approx(2.0)  # 16 px on a stride-8 map
    assert profile.image_size.min == 50 and profile.image_size.max == 100


def test_percentile_is_numpys_linear_rule():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([5.0], 5) == 5.0


def test_the_command_prints_a_table_or_json_and_names_bad_input(tmp_path, capsys):
    ann = _file(tmp_path)
    assert main(["data", "profile", str(ann), str(tmp_path / "images"), "--scale", "50"]) == 0
    out = capsys.readouterr().out
    assert "3 images, 5 annotations, 3 categories" in out
    assert "in cells, Deformable DETR (8 px)" in out and "imbalance inf" in out
    assert main(["data", "profile", str(ann), str(tmp_path / "images"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["objects_per_image"]["max"] == 2 and data["imbalance"] is None
    assert main(["data", "profile", str(ann), str(tmp_path / "nope")]) == 2
    assert "image folder" in capsys.readouterr().err
