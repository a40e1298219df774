import json

import pytest
import torch
from torchvision_fixtures import HERE, formula_input, formula_state_dict

from detr_ray.model.backbone import ResNetBackbone, load_torchvision_state_dict


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
        ValueError,
        match=r"missing keys \['layer2.0.conv1.weight'\], "
        r"unexpected keys \['layer5.0.conv1.weight'\]",
    ):
        load_torchvision_state_dict(ResNetBackbone(18), state_dict)
    with pytest.raises(ValueError, match="not a torchvision ResNet-50"):
        load_torchvision_state_dict(ResNetBackbone(50), formula_state_dict(_torchvision_keys(18)))


def test_dilation_halves_the_stride_of_the_last_stage():
    x = torch.zeros(1, 3, 64, 64)
    assert ResNetBackbone(50)(x).shape == (1, 2048, 2, 2)
    assert ResNetBackbone(50, dilation=True)(x).shape == (1, 2048, 4, 4)
    with pytest.raises(ValueError, match="dilation"):
        ResNetBackbone(18, dilation=True)
