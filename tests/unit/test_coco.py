import json
import logging

import pytest
import torch

from detr_ray.config.augmentation import AugmentationConfig
from detr_ray.data.coco import CocoDetection
from detr_ray.data.collate import PadCollate
from detr_ray.data.labels import LabelMap
from detr_ray.data.transforms import build_transforms
from detr_ray.errors import DataError

from tests.support.coco_files import write_dataset

IMAGES = [(10, "a.png", 40, 30), (11, "b.png", 20, 20), (12, "c.png", 32, 16)]


def _ann(image_id, category_id, bbox, **extra):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def test_targets_labels_and_clipping(tmp_path):
    anns = [
        _ann(10, 7, [5, 6, 10, 4]),
        _ann(10, 3, [30, 20, 20, 20]),  # runs off the image: clipped to 40 x 30
        _ann(11, 3, [-4, -2, 10, 10]),  # starts outside: clipped at 0
    ]
    dataset = CocoDetection(*write_dataset(tmp_path, IMAGES, anns))
    assert dataset.label_map == LabelMap((3, 7), ("cat", "dog"))
    _, target = dataset[0]
    assert target["image_id"] == 10 and target["orig_size"] == (30, 40)
    assert target["labels"].tolist() == [1, 0]
    assert target["boxes_xyxy"].tolist() == [[5, 6, 15, 10], [30, 20, 40, 30]]
    _, target = dataset[1]
    assert target["boxes_xyxy"].tolist() == [[0, 0, 6, 8]]


def test_crowd_boxes_are_not_training_targets_but_stay_for_evaluation(tmp_path):
    anns = [_ann(10, 7, [5, 6, 10, 4]), _ann(10, 3, [1, 1, 20, 20], iscrowd=1)]
    dataset = CocoDetection(*write_dataset(tmp_path, IMAGES, anns))
    _, target = dataset[0]
    assert target["labels"].tolist() == [1]
    assert len(dataset.coco.getAnnIds(imgIds=[10], iscrowd=None)) == 2
    assert dataset.stats["crowd boxes left out of training"] == 1


def test_invalid_boxes_are_dropped_counted_and_reported_once(tmp_path, caplog):
    anns = [
        _ann(10, 7, [5, 6, 10, 4]),
        _ann(10, 7, [5, 6, 0, 4]),  # zero width
        _ann(10, 7, [5, 6, 3, -1]),  # negative height
        _ann(11, 3, [float("nan"), 1, 2, 2]),
        _ann(11, 3, [25, 25, 5, 5]),  # entirely outside the 20 x 20 image
        _ann(12, 3, [32, 0, 5, 5]),  # touches the right edge only
    ]
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, anns)
    with caplog.at_level(logging.WARNING, logger="detr_ray.data.coco"):
        dataset = CocoDetection(ann_file, image_dir)
    assert dataset.stats["invalid boxes dropped (width or height <= 0)"] == 2
    assert dataset.stats["invalid boxes dropped (NaN or inf)"] == 1
    assert dataset.stats["invalid boxes dropped (outside the image)"] == 2
    assert [len(dataset[i][1]["labels"]) for i in range(3)] == [1, 0, 0]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ann.json" in warnings[0].getMessage()


def test_empty_images_are_kept_unless_filtered(tmp_path):
    anns = [_ann(10, 7, [5, 6, 10, 4])]
    files = write_dataset(tmp_path, IMAGES, anns)
    kept = CocoDetection(*files)
    assert kept.image_ids == [10, 11, 12]
    assert kept[2][1]["boxes_xyxy"].shape == (0, 4)
    assert CocoDetection(*files, filter_empty=True).image_ids == [10]


def test_missing_image_is_named_or_skipped(tmp_path):
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, [])
    (image_dir / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* 'b.png' \(image id 11\)"):
        CocoDetection(ann_file, image_dir)
    dataset = CocoDetection(ann_file, image_dir, on_bad_image="skip")
    assert dataset.image_ids == [10, 12]
    assert dataset.stats["missing images skipped"] == 1


def test_unreadable_image_is_named_or_skipped(tmp_path):
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, [])
    (image_dir / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"c.png \(image id 12\)"):
        CocoDetection(ann_file, image_dir)[2]
    to_tensor = build_transforms(AugmentationConfig(val_scale=16, max_size=64), train=False)
    skipping = CocoDetection(ann_file, image_dir, to_tensor, on_bad_image="skip")
    assert skipping[2] is None
    batch = PadCollate()([skipping[0], skipping[2]])
    assert [m.image_id for m in batch.metas] == [10]


def test_image_size_disagreeing_with_the_annotation_is_an_error(tmp_path):
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, [])
    data = json.loads(ann_file.read_text())
    data["images"][0]["width"] = 41
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"a.png \(image id 10\) is 40x30 but ann.json says 41x30"):
        CocoDetection(ann_file, image_dir)[0]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", r"not valid JSON: .*line 1"),
        (lambda d: [], "top level must be an object"),
        (lambda d: {**d, "annotations": None}, "missing the 'annotations' list"),
        (lambda d: {**d, "categories": []}, "'categories' is empty"),
        (
            lambda d: {**d, "images": [{"id": 1, "file_name": "a.png", "width": 2}]},
            r"'images'\[0\] has no 'height'",
        ),
        (
            lambda d: {**d, "annotations": [_ann(99, 3, [1, 1, 2, 2]) | {"id": 5}]},
            "annotation id 5 refers to image_id 99",
        ),
        (
            lambda d: {**d, "annotations": [_ann(10, 4, [1, 1, 2, 2]) | {"id": 6}]},
            "annotation id 6 refers to category_id 4",
        ),
        (
            lambda d: {**d, "annotations": [_ann(10, 3, [1, 1, 2]) | {"id": 7}]},
            r"annotation id 7: 'bbox' must be a list",
        ),
        (lambda d: {**d, "images": d["images"] + d["images"][:1]}, "duplicate id 10 in 'images'"),
    ],
)
def test_malformed_annotation_files_name_the_problem(tmp_path, mutate, message):
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, [_ann(10, 3, [1, 1, 2, 2])])
    changed = mutate(json.loads(ann_file.read_text()))
    ann_file.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    with pytest.raises(DataError, match=message) as error:
        CocoDetection(ann_file, image_dir)
    assert "ann.json" in str(error.value)


def test_missing_files_and_folders_are_named(tmp_path):
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, [])
    with pytest.raises(DataError, match="annotation file .*nope.json does not exist"):
        CocoDetection(tmp_path / "nope.json", image_dir)
    with pytest.raises(DataError, match="image folder .*nowhere"):
        CocoDetection(ann_file, tmp_path / "nowhere")


def test_a_given_label_map_is_used_and_unknown_annotated_categories_are_errors(tmp_path):
    anns = [_ann(10, 7, [5, 6, 10, 4])]
    files = write_dataset(tmp_path, IMAGES, anns)
    wider = LabelMap((1, 3, 7), ("person", "cat", "dog"))
    assert CocoDetection(*files, label_map=wider)[0][1]["labels"].tolist() == [2]
    with pytest.raises(DataError, match=r"category 7 \('dog'\) has annotations"):
        CocoDetection(*files, label_map=LabelMap((3,), ("cat",)))


def test_dataloader_with_workers_yields_padded_batches_with_matching_masks(tmp_path):
    anns = [_ann(10, 7, [5, 6, 10, 4]), _ann(12, 3, [1, 1, 8, 8])]
    ann_file, image_dir = write_dataset(tmp_path, IMAGES, anns)
    config = AugmentationConfig(
        train_scales=(16, 24),
        max_size=48,
        val_scale=24,
        crop_resize_scales=(16,),
        crop_size=(8, 16),
    )
    dataset = CocoDetection(ann_file, image_dir, build_transforms(config, train=True))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=3, num_workers=2, collate_fn=PadCollate(size_divisor=8)
    )
    for _ in range(2):
        for batch in loader:
            B, _, H, W = batch.images.shape
            assert H % 8 == 0 and W % 8 == 0
            for i, meta in enumerate(batch.metas):
                h, w = meta.img_shape
                assert meta.batch_input_shape == (H, W)
                assert not batch.padding_mask[i, :h, :w].any()
                assert batch.padding_mask[i, h:, :].all() and batch.padding_mask[i, :, w:].all()
                assert (batch.images[i, :, h:, :] == 0).all() and (
                    batch.images[i, :, :, w:] == 0
                ).all()
                boxes = batch.targets[i]["boxes"]
                assert ((boxes >= 0) & (boxes <= 1)).all()
