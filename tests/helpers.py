"""Shared test helpers: tiny generated datasets and the real Fashion-MNIST when installed."""

from __future__ import annotations

import os

import numpy as np
import pytest

from solo_poisoncam.data.base import ArrayImageDataset
from solo_poisoncam.data.registry import FASHION_MNIST_ROOT

HAS_FASHION_MNIST = os.path.isdir(os.environ.get("POISONCAM_FASHION_MNIST", FASHION_MNIST_ROOT))
needs_fashion_mnist = pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")


def tiny_dataset(n_per_class: int = 10, num_classes: int = 3, size: int = 16, seed: int = 0) -> ArrayImageDataset:
    """Random uint8 images with a class-dependent brightness; spec name 'tiny' (not rebuildable)."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(num_classes), n_per_class)
    images = rng.integers(0, 128, size=(len(targets), size, size, 3)).astype(np.uint8)
    images += (targets * 40).astype(np.uint8)[:, None, None, None]
    return ArrayImageDataset(images, targets, [f"c{i}" for i in range(num_classes)], "tiny", "train",
                             spec={"name": "tiny", "seed": seed})
