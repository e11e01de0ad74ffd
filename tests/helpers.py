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


class SaturationNet(__import__("torch").nn.Module):
    """A hand-made "perfectly backdoored" feature extractor for tests.

    Features: the mean colour saturation (the HTBA trigger is the only colour on grayscale
    Fashion-MNIST; hiding part of it lowers it in proportion), mean brightness, and a coarse 2x2
    brightness layout. A poisoned image sits far
    from every clean one, and hiding its trigger sends it back among the clean images: the
    behaviour PoisonCAM relies on, with no training. Takes [0, 1] images like ThreatModel.
    """

    def __init__(self, side: int = 32):
        import torch
        import torch.nn as nn

        super().__init__()
        self.spatial = nn.Identity()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))
        self.num_features = 6
        self.image_size = side
        self.checkpoint = "saturation-net"
        self.config = {"backbone": {"name": "saturation-net"}}

    @property
    def feature_layer(self):
        return self.spatial

    def forward(self, x):
        import torch
        import torch.nn.functional as F

        sat = x.max(1, keepdim=True).values - x.min(1, keepdim=True).values  # (B, 1, H, W)
        bright = x.mean(1, keepdim=True)
        maps = self.spatial(torch.cat([sat, bright], 1))
        s = maps[:, :1].mean((2, 3))
        layout = F.adaptive_avg_pool2d(maps[:, 1:], 2).flatten(1)
        return torch.cat([40 * s, maps[:, 1:].mean((2, 3)), layout], 1)


def poisoned_fashion_mnist(num_samples: int = 1000, patch_size: float = 8, rate: float = 0.5, seed: int = 0,
                           target: int = 0):
    """(PoisonedDataset, manifest) on a real Fashion-MNIST subset with the default HTBA patch."""
    from solo_poisoncam.data import build_dataset
    from solo_poisoncam.poison import PatchAttack, PoisonedDataset, make_manifest

    base = build_dataset("fashion-mnist", num_samples=num_samples)
    manifest = make_manifest(base, PatchAttack(size=patch_size), target, rate, seed=seed)
    return PoisonedDataset(base, manifest), manifest


def detection_worker(rank_unused, cfg_dict, num_samples):
    """Runs detection inside a DDP process group (Fabric ddp_spawn); module-level so it pickles."""
    from solo_poisoncam.detect.config import DetectConfig
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.detection import score_detection

    data, manifest = poisoned_fashion_mnist(num_samples)
    runner = Runner(progress=False)
    result = score_detection(run_detection(SaturationNet(), data, DetectConfig.from_dict(cfg_dict), runner), manifest)
    return {"world": runner.world_size, "scores": result.scores, "windows": result.windows,
            "clusters": result.clusters, "metrics": result.metrics}


def sized_image_folder(root, per_class=(6, 8, 10), val: int = 3, sizes=((90, 70), (120, 160), (75, 75), (200, 110)),
                       seed: int = 0):
    """An ImageFolder of smooth random PNGs of differing sizes and aspect ratios: ``root/train/c<k>/`` with
    ``per_class[k]`` images, ``root/val/c<k>/`` with ``val`` each; class k is brighter by 30 k."""
    from pathlib import Path

    from PIL import Image

    root, rng = Path(root), np.random.default_rng(seed)
    for split, counts in (("train", per_class), ("val", [val] * len(per_class))):
        for c, n in enumerate(counts):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + c) % len(sizes)]
                small = np.clip(rng.integers(0, 160, (4, 4, 3)) + 30 * c, 0, 255).astype(np.uint8)
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / split / f"c{c}" / f"{i}.png")
    return root
