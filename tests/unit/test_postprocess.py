import math

import torch

from detr_ray.model.postprocess import postprocess


def test_postprocess_by_hand():
    # one image 200 (h) x 100 (w), three queries, two classes + background
    logits = torch.tensor(
        [
            [
                [math.log(6), math.log(3), 0.0],  # p = 0.6, 0.3, 0.1 -> class 0, 0.6
                [0.0, 0.0, math.log(8)],  # background wins, best object 0.1
                [0.0, math.log(3), 0.0],
            ]
        ]
    )  # p = 0.2, 0.6, 0.2 -> class 1
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.1], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]]])
    (det,) = postprocess(logits, boxes, torch.tensor([[200, 100]]))
    torch.testing.assert_close(det["scores"], torch.tensor([0.6, 0.6, 0.1]))
    assert det["labels"].tolist()[:2] in ([0, 1], [1, 0]) and det["labels"][2] == 0
    first = det["labels"].tolist().index(0)
    torch.testing.assert_close(det["boxes_xyxy"][first], torch.tensor([40.0, 90.0, 60.0, 110.0]))
    (top,) = postprocess(logits, boxes, torch.tensor([[200, 100]]), top_k=1)
    assert len(top["scores"]) == 1
    (kept,) = postprocess(logits, boxes, torch.tensor([[200, 100]]), score_threshold=0.5)
    assert len(kept["scores"]) == 2
