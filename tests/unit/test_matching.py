import numpy as np
import pytest
import torch

from detr_ray.criterion.matcher import (
    FlatTargets,
    HungarianMatcher,
    Matching,
    NonFiniteCostError,
    matching_changes,
    solve_assignments,
)

from tests.support.reference_math import assign, match_cost
from tests.support.reference_setup import reference_matcher


def test_worked_example_3x3():
    # The reference's worked example: rows = queries, columns = targets;
    # optimum (0,1) (1,0) (2,2) with total cost 1 + 2 + 2 = 5.
    cost_qg = np.array([[4.0, 1, 3], [2, 0, 5], [3, 2, 2]])
    cost_ltq = cost_qg.T[None].copy()  # our layout: (L=1, T=3 targets, Q=3 queries)
    query_idx, target_idx, image_idx = solve_assignments(cost_ltq, [3])
    assert target_idx.tolist() == [[0, 1, 2]]
    assert query_idx.tolist() == [[1, 0, 2]]  # target 0 <- query 1, 1 <- 0, 2 <- 2
    assert image_idx.tolist() == [0, 0, 0]
    assert cost_qg[query_idx[0], target_idx[0]].sum() == 5


@pytest.mark.parametrize("fmt", ["xyxy", "cxcywh"])
@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.5, 1.0, 0.3)])
def test_batched_matcher_equals_per_layer_per_image_reference(make_batch, fmt, weights):
    counts = [3, 0, 7, 1, 12]  # an empty image, and G > Q for the last one
    num_layers, num_queries, num_classes = 3, 10, 6
    cls_scores, bbox_preds, targets = make_batch(num_layers, num_queries, num_classes, counts)
    matcher = HungarianMatcher(
        cls_cost=weights[0], bbox_cost=weights[1], iou_cost=weights[2], bbox_cost_format=fmt
    )
    matching = matcher(cls_scores, bbox_preds, targets)
    flat = FlatTargets.from_list(targets)
    cost = matcher.cost(cls_scores, bbox_preds, flat)  # (L, T, Q)

    assert matching.num_pairs == sum(min(g, num_queries) for g in counts)
    offset = 0
    for image, t in enumerate(targets):
        g = len(t["labels"])
        for layer in range(num_layers):
            query, target = matching.for_image(layer, image)
            if g == 0:
                assert query.numel() == 0 and target.numel() == 0
                continue
            ref_cost = match_cost(
                cls_scores[layer, image],
                bbox_preds[layer, image],
                t["labels"],
                t["boxes_abs"],
                t["hw"],
                *weights,
                fmt,
            )  # (Q, G)
            # every cost the batched pass computed, to 1e-6
            torch.testing.assert_close(
                cost[layer, offset : offset + g].T, ref_cost, atol=1e-6, rtol=0
            )
            ref_query, ref_target = assign(ref_cost)
            order = torch.argsort(query)
            assert query[order].tolist() == ref_query.tolist()
            assert target[order].tolist() == ref_target.tolist()
        offset += g


def test_more_targets_than_queries_matches_each_query_once(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 4, 3, [9])
    matching = reference_matcher()(cls_scores, bbox_preds, targets)
    assert matching.query_idx.shape == (2, 4)
    for layer in range(2):
        assert sorted(matching.query_idx[layer].tolist()) == [0, 1, 2, 3]
        assert len(set(matching.target_idx[layer].tolist())) == 4


def test_all_empty_batch_has_no_pairs(make_batch):
    cls_scores, bbox_preds, targets = make_batch(6, 5, 3, [0, 0])
    matching = reference_matcher()(cls_scores, bbox_preds, targets)
    assert matching.query_idx.shape == (6, 0)
    assert matching.target_idx.shape == (6, 0)
    assert matching.image_idx.shape == (0,)


def test_pairs_are_one_to_one_within_each_image(make_batch):
    cls_scores, bbox_preds, targets = make_batch(4, 8, 5, [5, 8, 2])
    matching = reference_matcher()(cls_scores, bbox_preds, targets)
    for layer in range(4):
        for image, t in enumerate(targets):
            query, target = matching.for_image(layer, image)
            assert len(set(query.tolist())) == len(query) == len(t["labels"])
            assert sorted(target.tolist()) == list(range(len(t["labels"])))


def test_nan_logits_name_the_layer_and_image(make_batch):
    cls_scores, bbox_preds, targets = make_batch(3, 5, 4, [2, 0, 3])
    cls_scores[1, 2, 4, 0] = float("nan")
    with pytest.raises(NonFiniteCostError, match="decoder layer 1, image 2"):
        reference_matcher()(cls_scores, bbox_preds, targets)


def test_inf_boxes_name_the_layer_and_image(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 5, 4, [1, 2])
    bbox_preds[0, 1, 3, 2] = float("inf")
    with pytest.raises(NonFiniteCostError, match="decoder layer 0, image 1"):
        reference_matcher()(cls_scores, bbox_preds, targets)


def test_nan_in_an_image_without_targets_is_not_an_error(make_batch):
    # Its queries are never matched, so there is no cost to poison.
    cls_scores, bbox_preds, targets = make_batch(2, 5, 4, [2, 0])
    cls_scores[:, 1] = float("nan")
    matching = reference_matcher()(cls_scores, bbox_preds, targets)
    assert matching.num_pairs == 2


def test_zero_area_target_boxes_match(make_batch):
    cls_scores, bbox_preds, targets = make_batch(2, 6, 3, [2])
    targets[0]["boxes"][0, 2:] = 0.0  # a point
    matching = reference_matcher()(cls_scores, bbox_preds, targets)
    assert matching.num_pairs == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bbox_cost_format"):
        reference_matcher(bbox_cost_format="xywh")
    with pytest.raises(ValueError, match="iou_cost"):
        reference_matcher(iou_cost=-1.0)
    with pytest.raises(ValueError, match="targets for a batch of 2"):
        one_target = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
        reference_matcher()(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), one_target)


def test_matching_changes_by_hand():
    # 2 images (2 and 1 targets), 3 layers. Last layer: targets 0,1,2 <- queries 4,1,0.
    matching = Matching(
        image_idx=torch.tensor([0, 0, 1]),
        query_idx=torch.tensor([[4, 2, 0], [4, 1, 3], [4, 1, 0]]),
        target_idx=torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]]),
        counts=(2, 1),
    )
    changed, total = matching_changes(matching)
    assert changed.tolist() == [1, 1] and total == 3  # layer 0 differs on target 1, layer 1 on 2


def test_matching_changes_when_targets_outnumber_queries():
    # one image, 3 targets, 2 queries: each layer matches 2 of the 3 targets
    matching = Matching(
        image_idx=torch.tensor([0, 0]),
        query_idx=torch.tensor([[0, 1], [1, 0]]),
        target_idx=torch.tensor([[0, 2], [1, 2]]),
        counts=(3,),
    )
    changed, total = matching_changes(matching)
    # last layer: target 1 <- query 1, target 2 <- query 0; layer 0: target 1 unmatched,
    # target 2 <- query 1: both differ
    assert changed.tolist() == [2] and total == 2
