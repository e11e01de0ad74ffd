"""Wall-clock accounting per named part (CUDA-synchronised, so GPU work is attributed honestly)."""

from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator, Optional

import torch


class StageClock:
    """``with clock("features", count=n): ...`` adds the block's seconds (and n items) under a name."""

    def __init__(self, device: Optional[torch.device] = None):
        self.sync = device is not None and torch.device(device).type == "cuda"
        self.seconds: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, count: int = 0) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.counts[name] = self.counts.get(name, 0) + count

    def rate(self, name: str) -> Optional[float]:
        """Items per second of a part, if it counted items."""
        s, c = self.seconds.get(name, 0.0), self.counts.get(name, 0)
        return c / s if s > 0 and c > 0 else None
