"""Backbones, heads and the threat-model wrapper."""

from solo_poisoncam.models.backbones import BACKBONES, ConvNet, create_backbone
from solo_poisoncam.models.heads import MLP, CosineClusterHead

__all__ = ["BACKBONES", "ConvNet", "create_backbone", "MLP", "CosineClusterHead"]
