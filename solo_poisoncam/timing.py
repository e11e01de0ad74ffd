"""Wall-clock accounting per named part (CUDA-synchronised, so GPU work is attributed honestly)."""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator, Optional

import torch


def peak_rss_mb() -> Optional[float]:
    """The process's peak resident memory in MiB (Linux ``VmHWM``: since :func:`reset_peak_rss`, where that
    worked); None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Start :func:`peak_rss_mb` again from the current resident memory (Linux ``clear_refs``); False where
    the system does not allow it (the peak is then the process's since it started)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageClock:
    """``with clock("features", count=n): ...`` adds the block's seconds (and n items) under a name, and
    for an outermost part its peak memory: ``peak_rss_mb`` (host) and, on CUDA, ``peak_cuda_mb``."""

    def __init__(self, device: Optional[torch.device] = None, log: Optional[Callable[[str], None]] = None):
        self.sync = device is not None and torch.device(device).type == "cuda"
        self.device = torch.device(device) if self.sync else None
        self.seconds: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}
        self.peak_rss_mb: Dict[str, float] = {}
        self.peak_cuda_mb: Dict[str, float] = {}
        self.log = log  # called with one line when an outermost part starts and when it ends
        self._depth = 0

    @contextlib.contextmanager
    def __call__(self, name: str, count: int = 0) -> Iterator[None]:
        outermost = self._depth == 0
        if self.sync:
            torch.cuda.synchronize()
        if outermost:
            reset_peak_rss()
            if self.sync:
                torch.cuda.reset_peak_memory_stats(self.device)
            if self.log is not None:  # a line before a long stage, so a log shows where the run is
                self.log(f"{name} ..." + (f" ({count} images)" if count else ""))
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
            if outermost:
                rss = peak_rss_mb()
                if rss is not None:
                    self.peak_rss_mb[name] = max(rss, self.peak_rss_mb.get(name, 0.0))
                if self.sync:
                    cuda = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
                    self.peak_cuda_mb[name] = max(cuda, self.peak_cuda_mb.get(name, 0.0))
                if self.log is not None:
                    self.log(f"{name}: {took:.1f} s" + (f" ({count} images)" if count else "")
                             + (f", peak {rss:.0f} MiB" if rss is not None else ""))

    def rate(self, name: str) -> Optional[float]:
        """Items per second of a part, if it counted items."""
        s, c = self.seconds.get(name, 0.0), self.counts.get(name, 0)
        return c / s if s > 0 and c > 0 else None
