"""Stage cache: results stored under a hash of everything that determines them."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from solo_poisoncam.io import hash_obj, save_torch


class StageCache:
    """``<dir>/<stage>-<key hash>.pt`` holding ``{"key": key, "value": value, "seconds": s}``.

    The full key is stored and compared on load, so a hash collision or a hand-copied file is
    never taken for a hit. ``seconds`` (the time the value took to compute) travels with it, so a
    resumed run still reports what each stage costs. Only rank 0 writes when a ``runner`` is
    distributed.
    """

    def __init__(self, directory, enabled: bool = True, runner=None):
        self.dir = Path(directory)
        self.enabled = enabled
        self.runner = runner
        self.hits: Dict[str, bool] = {}
        self.compute_seconds: Dict[str, Optional[float]] = {}

    def path(self, stage: str, key: Dict[str, Any]) -> Path:
        return self.dir / f"{stage}-{hash_obj(key)}.pt"

    def load(self, stage: str, key: Dict[str, Any]) -> Optional[Any]:
        p = self.path(stage, key)
        if not (self.enabled and p.is_file()):
            return None
        try:
            blob = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # a torn or foreign file is a miss, not an error, but said
            warnings.warn(f"stage cache file '{p}' could not be read ({type(e).__name__}: {e}); recomputing "
                          f"'{stage}'", RuntimeWarning)
            return None
        if not isinstance(blob, dict) or hash_obj(blob.get("key")) != hash_obj(key):
            return None
        self.compute_seconds[stage] = blob.get("seconds")
        return blob["value"]

    def save(self, stage: str, key: Dict[str, Any], value: Any, seconds: Optional[float] = None) -> None:
        if not self.enabled or (self.runner is not None and not self.runner.is_main):
            return
        save_torch(self.path(stage, key), {"key": key, "value": value, "seconds": seconds})

    def get_or_compute(self, stage: str, key: Dict[str, Any], compute: Callable[[], Any]) -> Any:
        """The cached value, or ``compute()`` (saved). Under DDP, rank 0 decides hit or miss for all
        ranks, so no rank skips a collective that another runs."""
        runner = self.runner
        distributed = runner is not None and runner.distributed
        value = self.load(stage, key) if (not distributed or runner.is_main) else None
        if distributed:
            hit = runner.broadcast_object(value is not None)
            if hit:
                value = runner.broadcast_object(value)
        self.hits[stage] = value is not None
        if value is None:
            start = time.perf_counter()
            value = compute()
            self.compute_seconds[stage] = round(time.perf_counter() - start, 3)
            self.save(stage, key, value, self.compute_seconds[stage])
        return value
