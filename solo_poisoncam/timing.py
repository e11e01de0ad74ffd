"""Wall-clock accounting per named part (CUDA-synchronised, so GPU work is attributed honestly)."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator, Optional

import torch


class StageClock:
    """``with clock("features", count=n): ...`` adds the block's seconds (and n items) under a name."""

    def __init__(self, device: Optional[torch.device] = None, log: Optional[Callable[[str], None]] = None):
        self.sync = device is not None and torch.device(device).type == "cuda"
        self.seconds: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}
        self.log = log  # called with one line when an outermost part ends (nested parts are only counted)
        self._depth = 0

    @contextlib.contextmanager
    def __call__(self, name: str, count: int = 0) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self.sync:
                torch.cuda.synchronize()
            took = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + took
            self.counts[name] = self.counts.get(name, 0) + count
            if self.log is not None and self._depth == 0:
                self.log(f"{name}: {took:.1f} s" + (f" ({count} images)" if count else ""))

    def rate(self, name: str) -> Optional[float]:
        """Items per second of a part, if it counted items."""
        s, c = self.seconds.get(name, 0.0), self.counts.get(name, 0)
        return c / s if s > 0 and c > 0 else None
