import json

import pytest
import torch

from detr_ray.errors import CheckpointError
from detr_ray.model.backbone import (
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm2d,
    ResNetBackbone,
    load_torchvision_state_dict,
)

from tests.support.torchvision_fixtures import HERE, formula_input, formula_state_dict


def _torchvision_keys(depth):
    return [
        (k, tuple(s))
        for k, s in json.loads((HERE / f"torchvision_resnet{depth}_keys.json").read_text())
    ]


@pytest.mark.parametrize("depth", [18, 50])
def test_state_dict_keys_and_shapes_equal_torchvision(depth):
    ours = [(k, tuple(v.shape)) for k, v in ResNetBackbone(depth).state_dict().items()]
    theirs = [
        (k, s)
        for k, s in _torchvision_keys(depth)
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    ]
    assert ours == theirs


@pytest.mark.parametrize("depth", [18, 50])
def test_features_equal_torchvision_for_the_same_weights(depth):
    # torchvision's own output (eval mode), stored by tests/torchvision_fixtures.py
    state_dict = formula_state_dict(_torchvision_keys(depth))  # includes fc.* and counters
    backbone = ResNetBackbone(depth).eval()
    load_torchvision_state_dict(backbone, state_dict)
    expected = torch.load(HERE / f"torchvision_resnet{depth}_features.pt", weights_only=True)
    with torch.no_grad():
        features = backbone(formula_input())
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-4)


def test_a_wrong_state_dict_lists_its_keys():
    state_dict = formula_state_dict(_torchvision_keys(18))
    del state_dict["layer2.0.conv1.weight"]
    state_dict["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys \['layer2.0.conv1.weight'\], "
        r"unexpected keys \['layer5.0.conv1.weight'\]",
    ):
        load_torchvision_state_dict(ResNetBackbone(18), state_dict)
    with pytest.raises(CheckpointError, match="not a torchvision ResNet-50"):
        load_torchvision_state_dict(ResNetBackbone(50), formula_state_dict(_torchvision_keys(18)))


def test_dilation_halves_the_stride_of_the_last_stage():
    x = torch.zeros(1, 3, 64, 64)
    assert ResNetBackbone(50)(x).shape == (1, 2048, 2, 2)
    assert ResNetBackbone(50, dilation=True)(x).shape == (1, 2048, 4, 4)
    with pytest.raises(ValueError, match="dilation"):
        ResNetBackbone(18, dilation=True)


@pytest.mark.parametrize(
    "depth, norm, expected",
    [
        (18, "group", torch.nn.GroupNorm),
        (18, "batch", torch.nn.BatchNorm2d),
        (50, "group", torch.nn.GroupNorm),
        (18, "frozen", FrozenBatchNorm2d),
    ],
)
def test_the_chosen_norm_is_used_everywhere_and_every_branch_learns(depth, norm, expected):
    # The stem, every block and every downsample use the chosen norm (20 for a
    # ResNet-18, 53 for a ResNet-50); and no residual branch is dead: its last
    # norm either learns (zero-initialised scale, which gets a gradient) or, when
    # frozen, keeps a non-zero scale so its convolutions get a gradient.
    backbone = ResNetBackbone(depth, trainable_stages=5, norm=norm).train()
    norms = [m for m in backbone.modules() if isinstance(m, expected)]
    assert len(norms) == {18: 20, 50: 53}[depth]
    assert not [
        m
        for m in backbone.modules()
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.GroupNorm, torch.nn.BatchNorm2d))
        and not isinstance(m, expected)
    ]
    backbone(torch.randn(2, 3, 64, 64)).square().mean().backward()
    blocks = [m for m in backbone.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == {18: 8, 50: 16}[depth]
    for block in blocks:
        last_norm, last_conv = (
            (block.bn3, block.conv3) if isinstance(block, Bottleneck) else (block.bn2, block.conv2)
        )
        if norm == "frozen":
            assert last_norm.weight.abs().min() > 0
            assert last_conv.weight.grad.abs().sum() > 0
        else:
            assert last_norm.weight.abs().max() == 0  # starts as the identity
            assert last_norm.weight.grad.abs().sum() > 0


def test_torchvision_weights_load_into_batch_norm_and_refuse_group_norm():
    state_dict = formula_state_dict(_torchvision_keys(18))
    batch = ResNetBackbone(18, norm="batch")
    load_torchvision_state_dict(batch, state_dict)
    assert torch.equal(batch.layer2[0].bn1.running_var, state_dict["layer2.0.bn1.running_var"])
    assert torch.equal(batch.layer4[1].conv2.weight, state_dict["layer4.1.conv2.weight"])
    with pytest.raises(CheckpointError, match="backbone_norm to 'frozen'"):
        load_torchvision_state_dict(ResNetBackbone(18, norm="group"), state_dict)
