"""Fixtures from real torchvision, and the formulas to rebuild their inputs.

Regenerating needs torchvision, which the test environment lacks:

    python tests/torchvision_fixtures.py

For ResNet-18 and -50 it writes the state_dict keys with shapes, and the last
feature map torchvision computes (eval mode) for weights and an input given
by a closed-form formula, so the tests can rebuild both without torchvision.
Produced with torch 2.14.1 and torchvision 0.29.1.
"""

import json
import math
from pathlib import Path

import torch

HERE = Path(__file__).parent / "data"


def formula_tensor(key: str, shape, scale: float, offset: float = 0.0) -> torch.Tensor:
    n = math.prod(shape)
    phase = sum(map(ord, key)) % 97
    values = torch.sin(torch.arange(n, dtype=torch.float64) * 0.618 + phase) * scale + offset
    return values.reshape(shape).float()


def formula_state_dict(keys_and_shapes):
    state = {}
    for key, shape in keys_and_shapes:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = formula_tensor(key, shape, 0.3, 1.0)
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = formula_tensor(key, shape, 0.1)
        elif ".bn" in key or "downsample.1" in key or key.startswith("bn1"):
            state[key] = formula_tensor(key, shape, 0.2, 0.8)  # BN weight
        else:  # conv / fc weight, scaled by fan-in
            fan_in = math.prod(shape[1:])
            state[key] = formula_tensor(key, shape, 1.5 / math.sqrt(fan_in))
    return state


def formula_input():
    return formula_tensor("input", (1, 3, 64, 64), 1.0)


def main():
    import torchvision

    for depth in (18, 50):
        model = getattr(torchvision.models, f"resnet{depth}")().eval()
        keys = [(k, list(v.shape)) for k, v in model.state_dict().items()]
        (HERE / f"torchvision_resnet{depth}_keys.json").write_text(json.dumps(keys, indent=0))
        model.load_state_dict(formula_state_dict(keys))
        body = torch.nn.Sequential(*list(model.children())[:-2])  # drop avgpool, fc
        with torch.no_grad():
            features = body(formula_input())
        torch.save(features, HERE / f"torchvision_resnet{depth}_features.pt")
        print(depth, len(keys), tuple(features.shape), float(features.abs().mean()))


if __name__ == "__main__":
    main()
