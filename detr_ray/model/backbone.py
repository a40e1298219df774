"""ResNet-18/34/50/101 backbones with torchvision's parameter and buffer names.

Why our own ResNet and not ``torchvision.models.resnet``: detr-ray does not
depend on torchvision (its wheels must match the torch build exactly, and
PyPI's do not import beside the CPU torch these machines use); DETR needs
variants torchvision's constructor does not offer together (frozen batch
norm whose affine terms are buffers, group norm for training from scratch,
a 3-stage trunk for small images, dilation of the last stage only); and the
freezing of early stages is part of the model here. The names are kept
identical to torchvision's on purpose: official DETR checkpoints and
torchvision ImageNet weights load by key (``tests/test_backbone.py`` checks
the keys and the features against torchvision's own outputs). Replacing this
module with torchvision's would change those keys and break every saved
checkpoint.

The module's ``state_dict`` keys are exactly those of a torchvision ResNet
without its classifier (``fc``), so ImageNet weights saved by torchvision load
with strict key checking (:func:`load_torchvision_state_dict`). Batch norm is
frozen (statistics and affine terms are buffers, as in the official DETR), the
stem and the first ``5 - trainable_stages`` stages get no gradient, and the
last stage can trade its stride for dilation (DETR's DC5 variant).

Input ``(B, 3, H, W)``; output the last feature map ``(B, C, H/32, W/32)``
(``H/16`` with dilation), ``C = 512`` for ResNet-18/34, ``2048`` for 50/101.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from detr_ray.errors import CheckpointError

# depth -> (block kind, blocks per stage)
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
NORMS = ("frozen", "batch", "group")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, all buffers.

    Detection batches are too small for batch statistics; DETR freezes them.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A trainable BatchNorm2d's state_dict also counts batches; that has no use here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _norm_factory(kind: str):
    """``frozen``: DETR's fixed batch norm (pretrained backbones, small batches);
    ``batch``: ordinary batch norm; ``group``: GroupNorm with 32 groups, whose
    statistics do not depend on the batch (training from scratch)."""
    if kind == "frozen":
        return FrozenBatchNorm2d
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda channels: nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"backbone norm must be one of {NORMS}, got {kind!r}")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample=None,
        dilation: int = 1,
        norm=FrozenBatchNorm2d,
    ):
        super().__init__()
        if dilation > 1:
            raise ValueError("dilation is only supported for ResNet-50/101 (bottleneck blocks)")
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample=None,
        dilation: int = 1,
        norm=FrozenBatchNorm2d,
    ):
        super().__init__()
        self.conv1 = _conv1x1(in_ch, planes)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetBackbone(nn.Module):
    """A torchvision-compatible ResNet body (no pooling, no classifier).

    Args:
        depth: 18, 34, 50 or 101.
        dilation: replace the last stage's stride with dilation (DC5).
        trainable_stages: how many of the last stages (``layer4`` backwards)
            receive gradients; 3 (the official DETR) freezes the stem and
            ``layer1``, 0 freezes everything, 5 trains the stem too.
        norm: ``frozen`` (the official DETR; keys as torchvision's), ``batch``
            or ``group`` (for training from scratch).
        num_stages: 4 (the official DETR: output stride 32) or 3 (stop after
            ``layer3``: stride 16, a finer feature map for small images).
    """

    def __init__(
        self,
        depth: int = 50,
        dilation: bool = False,
        trainable_stages: int = 3,
        norm: str = "frozen",
        num_stages: int = 4,
    ):
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        if not 0 <= trainable_stages <= 5:
            raise ValueError(f"trainable_stages must be in [0, 5], got {trainable_stages}")
        if num_stages not in (3, 4):
            raise ValueError(f"num_stages must be 3 or 4, got {num_stages}")
        if dilation and num_stages == 3:
            raise ValueError("dilation applies to layer4; it needs num_stages 4")
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.norm = depth, norm
        self._norm = _norm_factory(norm)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = self._norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._in_ch, self._dilation = 64, 1
        self.layer1 = self._make_stage(block, 64, blocks[0], stride=1)
        self.layer2 = self._make_stage(block, 128, blocks[1], stride=2)
        self.layer3 = self._make_stage(block, 256, blocks[2], stride=2)
        if num_stages == 4:
            self.layer4 = self._make_stage(block, 512, blocks[3], stride=2, dilate=dilation)
        self.num_stages = num_stages
        self.num_channels = (512 if num_stages == 4 else 256) * block.expansion
        self._init_weights()
        stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
        self._frozen = {name for stage in stages[: 5 - trainable_stages] for name in stage}
        for name, param in self.named_parameters():
            if name.split(".")[0] in self._frozen:
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        """As ``nn.Module.train``, but frozen stages stay in eval mode, so their
        batch-norm statistics (``backbone_norm: batch``) do not move either."""
        super().train(mode)
        for name in self._frozen:
            module = getattr(self, name, None)
            if module is not None:
                module.eval()
        return self

    def _make_stage(self, block, planes: int, num_blocks: int, stride: int, dilate: bool = False):
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self._in_ch != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._in_ch, planes * block.expansion, stride),
                self._norm(planes * block.expansion),
            )
        layers = [block(self._in_ch, planes, stride, downsample, previous_dilation, self._norm)]
        self._in_ch = planes * block.expansion
        layers += [
            block(self._in_ch, planes, dilation=self._dilation, norm=self._norm)
            for _ in range(1, num_blocks)
        ]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation (for training without ImageNet weights).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last (trainable) norm of each residual branch: each block
        # starts as the identity, which keeps a from-scratch network trainable.
        # A frozen norm's scale is a buffer: zeroing it would cut the branch
        # off for good, so frozen backbones keep the plain initialisation.
        with torch.no_grad():
            for m in self.modules():
                if not isinstance(m, (Bottleneck, BasicBlock)):
                    continue
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                if isinstance(last.weight, nn.Parameter):
                    last.weight.zero_()

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(x) if self.num_stages == 4 else x

    @property
    def level_channels(self) -> list[int]:
        """Channels of :meth:`forward_levels`' maps (``layer2`` on)."""
        expansion = self.num_channels // (512 if self.num_stages == 4 else 256)
        return [c * expansion for c in (128, 256, 512)[: self.num_stages - 1]]

    def forward_levels(self, images: Tensor) -> list[Tensor]:
        """The maps of ``layer2`` on: strides 8, 16 (and 32 with 4 stages),
        ``(B, C_l, H_l, W_l)`` each (the multi-scale input of Deformable DETR)."""
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(images)))))
        levels = [self.layer2(x)]
        levels.append(self.layer3(levels[-1]))
        if self.num_stages == 4:
            levels.append(self.layer4(levels[-1]))
        return levels


def load_torchvision_state_dict(backbone: ResNetBackbone, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ResNet ``state_dict`` (ImageNet weights) strictly.

    The classifier (``fc.*``) and ``num_batches_tracked`` counters are ignored;
    any other missing or unexpected key is an error that lists them.
    """
    if backbone.norm == "group":
        raise CheckpointError(
            "torchvision ResNet weights hold batch-norm statistics, which a group-norm "
            "backbone cannot use: set model.backbone_norm to 'frozen' (as the official "
            "DETR) or 'batch' to start from them"
        )

    def counter(key: str) -> bool:
        return key.endswith("num_batches_tracked")

    weights = {k: v for k, v in state_dict.items() if k not in CLASSIFIER_KEYS and not counter(k)}
    expected = {k for k in backbone.state_dict() if not counter(k)}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"not a torchvision ResNet-{backbone.depth} state_dict: "
            f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    backbone.load_state_dict(weights, strict=False)  # only the batch-norm counters are absent
