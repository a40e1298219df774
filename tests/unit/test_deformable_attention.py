"""Deformable attention against HF transformers' module with the same weights, and its init.

HF's ``DeformableDetrMultiscaleDeformableAttention`` (pure-PyTorch path) is
an independent implementation of the same layer: with its weights copied in,
both give the same output in float64, for point and box reference points,
with padded pixels.
"""

from __future__ import annotations

import pytest
import torch
import transformers  # the dev extra's: this comparison always runs in make test
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
)

from detr_ray.model.deformable.attention import DeformableAttention
from detr_ray.model.deformable.sampling import level_starts

DIM, LEVELS, HEADS, POINTS = 32, 3, 4, 2
SHAPES = torch.tensor([[6, 7], [3, 4], [2, 2]])


def _pair(seed):
    torch.manual_seed(seed)
    config = transformers.DeformableDetrConfig(
        d_model=DIM, num_feature_levels=LEVELS, disable_custom_kernels=True
    )
    theirs = DeformableDetrMultiscaleDeformableAttention(config, HEADS, POINTS).double().eval()
    ours = DeformableAttention(DIM, LEVELS, HEADS, POINTS).double().eval()
    with torch.no_grad():  # random weights, not the init: every path counts
        for p in theirs.parameters():
            p.normal_(0, 0.3)
    ours.load_state_dict(
        {k: v for k, v in theirs.state_dict().items() if not k.startswith("attn.")}
    )
    return ours, theirs


@pytest.mark.parametrize("coordinates", [2, 4], ids=["points", "boxes"])
def test_it_equals_hf_with_the_same_weights(coordinates):
    ours, theirs = _pair(0)
    g = torch.Generator().manual_seed(1)
    n, q, s = 2, 5, int(SHAPES.prod(1).sum())
    query = torch.randn(n, q, DIM, generator=g, dtype=torch.float64)
    values = torch.randn(n, s, DIM, generator=g, dtype=torch.float64)
    reference = torch.rand(n, q, LEVELS, coordinates, generator=g, dtype=torch.float64)
    if coordinates == 4:
        reference[..., 2:] = reference[..., 2:] * 0.5 + 0.05
    padded = torch.zeros(n, s, dtype=torch.bool)
    padded[1, 5:7] = True  # image 1: the right end of level 0's first row is padding
    out = ours(query, reference, values, SHAPES, padded)
    expected, _ = theirs(
        hidden_states=query,
        attention_mask=~padded,
        encoder_hidden_states=values,
        reference_points=reference,
        spatial_shapes=SHAPES,
        spatial_shapes_list=[tuple(x) for x in SHAPES.tolist()],
        level_start_index=level_starts(SHAPES),
    )
    assert out.shape == (n, q, DIM)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def test_the_official_init_puts_each_head_on_its_own_ray_with_equal_weights():
    layer = DeformableAttention(dim=16, num_levels=2, num_heads=4, num_points=3)
    bias = layer.sampling_offsets.bias.view(4, 2, 3, 2)
    # 4 heads: angles 0, 90, 180, 270 degrees -> unit steps (1,0), (0,1), (-1,0), (0,-1)
    rays = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for head in range(4):
        for level in range(2):
            for point in range(3):
                expected = rays[head] * (point + 1)
                assert torch.allclose(bias[head, level, point], expected, atol=1e-6)
    # 8 heads: the diagonal ones are scaled to the square's corner (cos 45 / cos 45 = 1)
    diagonal = DeformableAttention(dim=16, num_levels=1, num_heads=8, num_points=1)
    assert torch.allclose(diagonal.sampling_offsets.bias.view(8, 2)[1], torch.tensor([1.0, 1.0]))
    assert not layer.sampling_offsets.weight.any() and not layer.attention_weights.weight.any()
    # zero attention logits: every one of a head's L * P points weighs 1 / (L * P)
    query = torch.randn(1, 3, 16)
    logits = layer.attention_weights(query).view(1, 3, 4, 6)
    assert torch.allclose(logits.softmax(-1), torch.full_like(logits, 1 / 6))
    assert not layer.value_proj.bias.any() and not layer.output_proj.bias.any()
