"""The category-id <-> contiguous-label map."""

import json

import pytest

from detr_ray.data.labels import LabelMap


def test_categories_are_sorted_by_id_into_contiguous_labels():
    label_map = LabelMap.from_categories(
        [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]
    )
    assert label_map.category_ids == (1, 18, 90) and label_map.num_classes == 3
    assert [label_map.label_of(c) for c in (1, 18, 90)] == [0, 1, 2]
    assert [label_map.category_id(i) for i in range(3)] == [1, 18, 90]
    assert [label_map.name(i) for i in range(3)] == ["person", "dog", "toothbrush"]


def test_round_trip_through_json_and_unknown_ids():
    label_map = LabelMap((1, 5, 9), ("traffic light", "AP@[.5]", "hair drier"))
    assert LabelMap.from_dict(json.loads(json.dumps(label_map.to_dict()))) == label_map
    with pytest.raises(KeyError, match=r"category id 2 is not in the label map \(1, 5, 9\)"):
        label_map.label_of(2)


def test_metric_names_keep_only_what_mlflow_accepts():
    label_map = LabelMap((1, 5, 9), ("traffic light", "AP@[.5]", "a-b_c.d:e/f"))
    assert label_map.metric_name(0) == "traffic light"
    assert label_map.metric_name(1) == "AP__.5_"  # @ [ ] replaced
    assert label_map.metric_name(2) == "a-b_c.d:e/f"  # all allowed as they are


@pytest.mark.parametrize(
    "ids, names, message",
    [
        ((1, 2), ("a",), "same length"),
        ((1, 1), ("a", "b"), "duplicate category ids"),
        ((), (), "at least one category"),
    ],
)
def test_malformed_maps_are_refused(ids, names, message):
    with pytest.raises(ValueError, match=message):
        LabelMap(ids, names)
