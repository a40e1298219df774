"""Deformable DETR's encoder and decoder against HF transformers' with the same weights.

HF's ``DeformableDetrEncoder`` / ``DeformableDetrDecoder`` are an independent
implementation of the same layers under other names; with their weights
copied in (renamed by :mod:`detr_ray.model.hf_names`), both give the same outputs in float64,
with padded images (valid ratios below 1), for point references and for
refined boxes.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoder,
    DeformableDetrEncoder,
)

from detr_ray.model.deformable.sampling import level_starts
from detr_ray.model.deformable.transformer import (
    DeformableDecoder,
    DeformableDecoderLayer,
    DeformableEncoder,
    DeformableEncoderLayer,
    encoder_reference_points,
    valid_ratios,
)
from detr_ray.model.hf_names import hf_deformable_transformer_names

DIM, FFN, LEVELS, HEADS, POINTS, LAYERS = 32, 48, 3, 4, 2, 2
SHAPES = torch.tensor([[6, 8], [3, 4], [2, 2]])


def _config():
    return transformers.DeformableDetrConfig(
        d_model=DIM,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_n_points=POINTS,
        decoder_n_points=POINTS,
        num_feature_levels=LEVELS,
        disable_custom_kernels=True,
    )


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module.double().eval()


def _renamed(state, part):
    """HF's names of the ``part`` (encoder or decoder) module, in ours."""
    renamed = hf_deformable_transformer_names({f"{part}.{k}": v for k, v in state.items()})
    return {k[len(part) + 1 :]: v for k, v in renamed.items()}


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n, s = 2, int(SHAPES.prod(1).sum())
    # image 1 is padded: 4 of 6 rows, 6 of 8 columns on level 0 (and so on below)
    masks = [torch.zeros(n, h, w, dtype=torch.bool) for h, w in SHAPES.tolist()]
    for mask, (rows, cols) in zip(masks, [(4, 6), (2, 3), (1, 1)], strict=True):
        mask[1, rows:, :] = True
        mask[1, :, cols:] = True
    padding = torch.cat([m.flatten(1) for m in masks], 1)
    tokens = torch.randn(n, s, DIM, generator=g, dtype=torch.float64)
    pos = torch.randn(n, s, DIM, generator=g, dtype=torch.float64)
    return tokens, pos, padding, valid_ratios(masks).double()


def test_valid_ratios_and_the_encoders_reference_points_by_hand():
    _, _, _, ratios = _inputs(0)
    assert ratios[0].tolist() == [[1.0, 1.0]] * 3
    expected = [6 / 8, 4 / 6, 3 / 4, 2 / 3, 1 / 2, 1 / 2]
    assert ratios[1].flatten().tolist() == pytest.approx(expected, abs=1e-7)
    points = encoder_reference_points(SHAPES.tolist(), ratios)
    assert points.shape == (2, 48 + 12 + 4, 3, 2)
    # image 1, level 0, token (row 0, col 1): centre (1.5, 0.5) over the valid 6 x 4
    # cells, i.e. (0.25, 0.125) of the image, which on level 1 (valid 3/4 x 2/3) is
    assert points[1, 1, 0].tolist() == pytest.approx([1.5 / 6 * 6 / 8, 0.5 / 4 * 4 / 6])
    assert points[1, 1, 1].tolist() == pytest.approx([1.5 / 6 * 3 / 4, 0.5 / 4 * 2 / 3])


def test_the_encoder_equals_hf():
    theirs = _randomise(DeformableDetrEncoder(_config()))
    ours = DeformableEncoder(DeformableEncoderLayer(DIM, FFN, 0.1, LEVELS, HEADS, POINTS), LAYERS)
    ours.double().eval().load_state_dict(_renamed(theirs.state_dict(), "encoder"))
    tokens, pos, padding, ratios = _inputs(1)
    out = ours(tokens, pos, SHAPES, ratios, padding)
    expected = theirs(
        inputs_embeds=tokens,
        attention_mask=~padding,
        spatial_position_embeddings=pos,
        spatial_shapes=SHAPES,
        spatial_shapes_list=[tuple(x) for x in SHAPES.tolist()],
        level_start_index=level_starts(SHAPES),
        valid_ratios=ratios,
    ).last_hidden_state
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("refine", [False, True], ids=["points", "refined-boxes"])
def test_the_decoder_equals_hf(refine):
    theirs = _randomise(DeformableDetrDecoder(_config()))
    ours = DeformableDecoder(DeformableDecoderLayer(DIM, FFN, 0.1, LEVELS, HEADS, POINTS), LAYERS)
    ours.double().eval().load_state_dict(_renamed(theirs.state_dict(), "decoder"))
    memory, _, padding, ratios = _inputs(2)
    g = torch.Generator().manual_seed(3)
    queries = torch.randn(2, 5, DIM, generator=g, dtype=torch.float64)
    query_pos = torch.randn(2, 5, DIM, generator=g, dtype=torch.float64)
    reference = torch.rand(2, 5, 4 if refine else 2, generator=g, dtype=torch.float64)
    if refine:  # one box head per layer, shared by both
        heads = nn.ModuleList(nn.Linear(DIM, 4) for _ in range(LAYERS)).double()
        theirs.bbox_embed = ours.bbox_embed = heads
    outputs, references = ours(queries, query_pos, reference, memory, SHAPES, ratios, padding)
    expected = theirs(
        inputs_embeds=queries,
        encoder_hidden_states=memory,
        encoder_attention_mask=~padding,
        object_queries_position_embeddings=query_pos,
        reference_points=reference,
        spatial_shapes=SHAPES,
        spatial_shapes_list=[tuple(x) for x in SHAPES.tolist()],
        level_start_index=level_starts(SHAPES),
        valid_ratios=ratios,
    )
    assert outputs.shape == (LAYERS, 2, 5, DIM)
    torch.testing.assert_close(
        outputs, expected.intermediate_hidden_states.transpose(0, 1), rtol=0, atol=1e-9
    )
    # ours: the reference each layer started from; HF's: each layer's moved one
    torch.testing.assert_close(references[0], reference, rtol=0, atol=0)
    moved = expected.intermediate_reference_points.transpose(0, 1)
    for layer in range(1, LAYERS):
        torch.testing.assert_close(references[layer], moved[layer - 1], rtol=0, atol=1e-9)
    if refine:
        assert not torch.allclose(references[1], references[0])  # the boxes did move
