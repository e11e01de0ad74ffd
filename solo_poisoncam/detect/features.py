"""Feature extraction: streamed in batches, L2-normalised, cached by checkpoint + data + settings."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cache import StageCache
from solo_poisoncam.detect.runner import Runner


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: IndexedImages, runner: Optional[Runner] = None,
                     batch_size: int = 512, num_workers: int = 0) -> torch.Tensor:
    """L2-normalised features (N, D) float32 on the CPU, row j for ``images.indexes[j]``."""
    runner = runner or Runner()
    model = model.to(runner.device).eval()

    def fn(_, x):
        return F.normalize(model(x.float() / 255).float(), dim=1)

    return runner.map_images(fn, images, batch_size=batch_size, num_workers=num_workers, desc="features")


def cached_features(model, images: IndexedImages, cache: Optional[StageCache], key: Dict[str, Any],
                    runner: Optional[Runner] = None, batch_size: int = 512, num_workers: int = 0) -> torch.Tensor:
    """:func:`extract_features` through ``cache`` (a stale entry is never used: the key covers the
    checkpoint's bytes, the data's fingerprint, the poisons and the settings)."""
    if cache is None:
        return extract_features(model, images, runner, batch_size, num_workers)
    return cache.get_or_compute("features", key, lambda: extract_features(model, images, runner, batch_size, num_workers))
