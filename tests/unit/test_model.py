import argparse
import math

import pytest
import torch

from detr_ray.checkpoint import load_model
from detr_ray.config.model import PRESETS, preset_config
from detr_ray.errors import CheckpointError
from detr_ray.model.build import build_model, build_preset
from detr_ray.model.official import from_official_state_dict, to_official_state_dict
from detr_ray.model.position_encoding import LearnedPositionalEncoding, SinePositionalEncoding
from detr_ray.model.transformer import Transformer

from tests.support.official_reference import official_forward


def _randomise_frozen_bn(model, seed=0):
    """Non-trivial batch-norm buffers, so the backbone comparison means something."""
    g = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith(("running_var", "weight")):
            buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        elif name.endswith(("running_mean", "bias")):
            buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)


def _padded_batch(seed=0, sizes=None):
    sizes = sizes or ((64, 48), (40, 64))
    g = torch.Generator().manual_seed(seed)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, height, width)
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[i, :h, :w] = False
    return images, mask


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_gives_the_promised_shapes(name):
    model = build_preset(name, num_classes=5).eval()
    config = PRESETS[name]
    # two stages choose their 300 queries among the tokens: images with enough of them
    images, mask = _padded_batch(sizes=((160, 128), (96, 160)) if config.two_stage else None)
    with torch.no_grad():
        outputs = model(images, mask)
    cls_scores, bbox_preds = outputs[0], outputs[1]
    shape = (config.num_decoder_layers, 2, config.num_queries)
    # DETR: K + 1 softmax logits (background last); Deformable DETR: K sigmoid logits
    assert cls_scores.shape == shape + (5 if config.deformable else 6,)
    assert bbox_preds.shape == shape + (4,)
    assert ((bbox_preds >= 0) & (bbox_preds <= 1)).all()


def test_official_r50_sizes():
    model = build_preset("detr_r50", num_classes=91)
    params = list(model.parameters())
    assert sum(p.numel() for p in params) == 41_524_768
    assert sum(p.numel() for p in params if p.requires_grad) == 41_302_368
    assert len(model.state_dict()) == 458


def test_backbone_freezing_follows_trainable_stages():
    model = build_preset("detr_r50", num_classes=2)
    frozen = {
        n.split(".")[1]
        for n, p in model.backbone.named_parameters(prefix="backbone")
        if not p.requires_grad
    }
    assert frozen == {"conv1", "layer1"}
    for norm in ["frozen", "group", "batch"]:
        nothing = build_preset(
            "detr_r18_tiny", num_classes=2, trainable_backbone_stages=0, backbone_norm=norm
        )
        assert not any(p.requires_grad for p in nothing.backbone.parameters()), norm
    # frozen stages keep their batch-norm statistics in train mode; trained ones update them
    partly = build_preset(
        "detr_r18_tiny", num_classes=2, backbone_norm="batch", trainable_backbone_stages=3
    ).train()
    assert not partly.backbone.bn1.training and not partly.backbone.layer1[0].bn1.training
    assert partly.backbone.layer2[0].bn1.training and partly.training


@pytest.mark.parametrize(
    "preset, overrides",
    [
        # the official DETR's backbone has frozen batch norm
        ("detr_r18_tiny", {"backbone_norm": "frozen"}),
        ("detr_r18_small", {"dropout": 0.0, "backbone_norm": "frozen"}),
        (
            "detr_r50",
            {
                "d_model": 64,
                "nhead": 4,
                "num_encoder_layers": 2,
                "num_decoder_layers": 3,
                "dim_feedforward": 96,
                "num_queries": 7,
            },
        ),
        (
            "detr_r50_dc5",
            {
                "d_model": 32,
                "num_encoder_layers": 1,
                "num_decoder_layers": 2,
                "dim_feedforward": 64,
                "num_queries": 5,
            },
        ),
        ("detr_r18_tiny", {"pre_norm": True, "num_encoder_layers": 2, "backbone_norm": "frozen"}),
    ],
)
def test_outputs_equal_the_official_computation(preset, overrides):
    torch.manual_seed(0)
    config = preset_config(preset, num_classes=4, **overrides)
    model = build_model(config).eval()
    _randomise_frozen_bn(model)
    images, mask = _padded_batch(sizes=((96, 64), (64, 80)))
    official = to_official_state_dict(model)
    with torch.no_grad():
        ours = model(images, mask)
        reference = official_forward(
            official, images, mask, config.backbone_depth, config.nhead, config.dilation
        )
    torch.testing.assert_close(ours[0], reference[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[1], reference[1], atol=1e-5, rtol=1e-4)


def test_transformer_ignores_padding_under_the_mask():
    torch.manual_seed(0)
    transformer = Transformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
    ).eval()
    encoding = SinePositionalEncoding(16)
    queries = torch.randn(6, 32)
    src = torch.randn(1, 32, 5, 4)
    alone_mask = torch.zeros(1, 5, 4, dtype=torch.bool)
    padded = torch.randn(2, 32, 7, 9) * 10  # arbitrary values everywhere...
    padded[0, :, :5, :4] = src[0]  # ...except our image
    mask = torch.ones(2, 7, 9, dtype=torch.bool)
    mask[0, :5, :4] = False
    mask[1, :6, :9] = False  # a second, larger image in the batch
    with torch.no_grad():
        alone = transformer(src, alone_mask, queries, encoding(alone_mask))
        batched = transformer(padded, mask, queries, encoding(mask))
    torch.testing.assert_close(batched[:, 0], alone[:, 0], atol=1e-5, rtol=0)


def test_sine_encoding_by_hand():
    # One image, 2 x 3 feature map, last column padding; num_feats = 4, so the
    # channel divisors are 1, 1, 100, 100 (10000 ** (2 * (i // 2) / 4)).
    mask = torch.tensor([[[False, False, True], [False, False, True]]])
    y = [[1, 1, 0], [2, 2, 0]]  # cumsum of the non-padding mask: 0 in padding columns
    x = [[1, 2, 2], [1, 2, 2]]
    pos = SinePositionalEncoding(num_feats=4, normalize=False)(mask)
    assert pos.shape == (1, 8, 2, 3)
    for r in range(2):
        for c in range(3):
            expected = [
                math.sin(y[r][c]),
                math.cos(y[r][c]),
                math.sin(y[r][c] / 100),
                math.cos(y[r][c] / 100),
                math.sin(x[r][c]),
                math.cos(x[r][c]),
                math.sin(x[r][c] / 100),
                math.cos(x[r][c] / 100),
            ]
            torch.testing.assert_close(pos[0, :, r, c], torch.tensor(expected))
    # normalised: y / (2 + eps) * 2 pi, x / (2 + eps) * 2 pi (the padding column repeats 2)
    pos = SinePositionalEncoding(num_feats=4, normalize=True)(mask)
    scale = 2 * math.pi / (2 + 1e-6)
    torch.testing.assert_close(pos[0, 0, 1, 0], torch.tensor(math.sin(2 * scale)))
    torch.testing.assert_close(pos[0, 5, 0, 1], torch.tensor(math.cos(2 * scale)))


def test_learned_encoding_shape_and_size_limit():
    encoding = LearnedPositionalEncoding(num_feats=8, max_size=10)
    assert encoding(torch.zeros(2, 4, 6, dtype=torch.bool)).shape == (2, 16, 4, 6)
    with pytest.raises(ValueError, match="exceeds"):
        encoding(torch.zeros(1, 11, 3, dtype=torch.bool))


def test_official_layout_round_trip_and_names():
    model = build_preset("detr_r18_tiny", num_classes=3, position_encoding="learned")
    official = to_official_state_dict(model)
    assert "backbone.0.body.layer1.0.conv1.weight" in official
    assert "backbone.1.row_embed.weight" in official
    assert "transformer.decoder.layers.1.multihead_attn.in_proj_weight" in official
    assert "class_embed.weight" in official and "bbox_embed.layers.2.bias" in official
    back = from_official_state_dict(official)
    assert list(back) == list(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_from_official_checkpoint_builds_the_described_model(tmp_path):
    torch.manual_seed(1)
    config = preset_config(
        "detr_r50",
        num_classes=91,
        d_model=32,
        nhead=4,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dim_feedforward=48,
        num_queries=9,
    )
    model = build_model(config).eval()
    _randomise_frozen_bn(model)
    args = argparse.Namespace(
        backbone="resnet50",
        dilation=False,
        nheads=4,
        hidden_dim=32,
        lr_backbone=1e-5,
        position_embedding="sine",
        dropout=0.1,
        pre_norm=False,
        masks=False,
    )
    path = tmp_path / "detr.pth"
    torch.save({"model": to_official_state_dict(model), "args": args}, path)
    loaded = load_model(path).model
    assert loaded.num_queries == 9 and loaded.num_classes == 91
    images, mask = _padded_batch()
    with torch.no_grad():
        for a, b in zip(model(images, mask), loaded(images, mask)):
            torch.testing.assert_close(a, b)


def test_official_checkpoint_mismatch_lists_keys(tmp_path):
    from detr_ray.model.official import load_official_state_dict

    model = build_preset("detr_r18_tiny", num_classes=3)
    official = to_official_state_dict(model)
    del official["query_embed.weight"]
    official["transformer.encoder.norm.weight"] = torch.ones(64)
    with pytest.raises(
        CheckpointError,
        match=r"missing \['query_embed.weight'\], unexpected "
        r"\['transformer.encoder.norm.weight'\]",
    ):
        load_official_state_dict(model, official)
