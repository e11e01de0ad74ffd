"""Backbones by name (timm-style registry). Each has ``num_features`` and ``feature_layer``
(the module whose output is the last spatial feature map, for Grad-CAM)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torchvision

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.registry import Registry

BACKBONES: Registry = Registry("backbone")


class ConvNet(nn.Module):
    """A small CNN for CPU-sized SSL: conv-BN-ReLU blocks, stride 2 every other block, global pool.

    At 32x32 the default widths learn a patch backdoor with BYOL within minutes on 2 CPU cores
    (benchmarks/results/detection-main.md), where a CIFAR-stem ResNet-18 runs at ~23 img/s.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 32, 64, 64, 128), in_chans: int = 3):
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            stride = 2 if i % 2 == 1 else 1
            layers += [nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c

    @property
    def feature_layer(self) -> nn.Module:
        return self.features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@BACKBONES.register("cnn_small")
def cnn_small(**kwargs: Any) -> ConvNet:
    """0.14M parameters (16-32-32-64-64-128): the CPU default."""
    return ConvNet((16, 32, 32, 64, 64, 128), **kwargs)


@BACKBONES.register("cnn")
def cnn(**kwargs: Any) -> ConvNet:
    """0.57M parameters (32-64-64-128-128-256)."""
    return ConvNet((32, 64, 64, 128, 128, 256), **kwargs)


def _resnet(arch: str, cifar_stem: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision ResNet with ``fc = Identity`` as solo-learn builds it; ``cifar_stem`` is solo's
    3x3 stride-1 conv1 without max-pool (solo uses it when ``data.dataset`` is cifar10/cifar100)."""
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    model.num_features = model.fc.in_features
    model.fc = nn.Identity()
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        model.maxpool = nn.Identity()
    # an alias, not a second registered child: state_dict keys stay exactly solo-learn's
    object.__setattr__(model, "feature_layer", model.layer4)
    return model


@BACKBONES.register("resnet18")
def resnet18(**kwargs: Any) -> nn.Module:
    return _resnet("resnet18", **kwargs)


@BACKBONES.register("resnet50")
def resnet50(**kwargs: Any) -> nn.Module:
    return _resnet("resnet50", **kwargs)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; unknown names list the valid ones."""
    fn = BACKBONES.get(name)
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise PoisonCamError(f"bad arguments for backbone '{name}': {e}") from e
