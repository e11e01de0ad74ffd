"""Feature extraction: streamed in batches, L2-normalised (the detection pipeline caches it)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.engine.runner import Runner


def unit_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised float32 features of [0, 1] images: what every stage means by "the features"."""
    return F.normalize(model(x).float(), dim=1)


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: IndexedImages, runner: Optional[Runner] = None,
                     batch_size: int = 512, num_workers: int = 0) -> torch.Tensor:
    """L2-normalised features (N, D) float32 on the CPU, row j for ``images.indexes[j]``."""
    runner = runner or Runner()
    model = model.to(runner.device).eval()

    def fn(_, x):
        return unit_features(model, x.float() / 255)

    return runner.map_images(fn, images, batch_size=batch_size, num_workers=num_workers, desc="features")
