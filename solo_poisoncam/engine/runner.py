"""Where per-image work runs: one process, or data-parallel ranks (DDP) with results gathered in order.

Any ``torch.distributed`` process group works: the one Lightning Fabric/Trainer sets up for a
``ddp`` strategy across GPUs and nodes, or a gloo group on CPU. Each rank takes a contiguous
shard of the positions; :meth:`Runner.gather` returns the full result, in position order, on
every rank.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from solo_poisoncam.checks import check
from solo_poisoncam.data.indexed import IndexedImages

AMP = ("off", "bf16", "fp16")


class Runner:
    """Device plus (optional) process group of a detection run."""

    def __init__(self, device: Optional[torch.device] = None, progress: bool = True):
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        if device is None:
            device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.progress = progress and self.rank == 0
        self.tag = "poisoncam"

    @contextlib.contextmanager
    def tagged(self, tag: str):
        """Within it, :meth:`info` lines start with ``[tag]`` (the detector at work) instead of ``[poisoncam]``."""
        before, self.tag = self.tag, tag
        try:
            yield self
        finally:
            self.tag = before

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def info(self, message: str) -> None:
        """One plain line on stderr (rank 0): each stage says when it is done, bars or not, TTY or not."""
        if self.is_main:
            print(f"[{self.tag}] {message}", file=sys.stderr, flush=True)

    def autocast(self, amp: str = "off"):
        """Autocast on this device in ``amp`` = off | bf16 | fp16 (docs/design.md, Precision)."""
        check(amp in AMP, f"amp must be one of {', '.join(AMP)}, got '{amp}'")
        if amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def shard(self, n: int) -> np.ndarray:
        """Positions 0..n-1 handled by this rank (contiguous, sizes differ by at most one)."""
        return np.array_split(np.arange(n), self.world_size)[self.rank]

    def gather(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Concatenate every rank's ``rows`` (this rank's shard, in order) into (n, ...) on every rank."""
        if not self.distributed:
            return rows
        sizes = [len(s) for s in np.array_split(np.arange(n), self.world_size)]
        backend_device = rows.device if dist.get_backend() == "nccl" else torch.device("cpu")
        pad = torch.zeros((max(sizes),) + tuple(rows.shape[1:]), dtype=rows.dtype, device=backend_device)
        pad[: len(rows)] = rows.to(backend_device)
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        dist.all_gather(parts, pad)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(rows.device)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def map_images(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: IndexedImages,
                   batch_size: int = 256, num_workers: int = 0, desc: str = "") -> torch.Tensor:
        """Apply ``fn(dataset_indexes (B,), uint8 images (B, 3, S, S) on device) -> (B, ...)`` to every
        image of ``images``; returns the stacked outputs (len(images), ...) on the CPU, in order."""
        mine = self.shard(len(images))
        subset = torch.utils.data.Subset(images, mine.tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        outs = []
        for idx, x, _ in tqdm(loader, desc=desc, disable=not (self.progress and sys.stderr.isatty()), leave=False):
            y = fn(idx.to(self.device), x.to(self.device, non_blocking=True))
            outs.append(y.float().cpu() if y.is_floating_point() else y.cpu())
        if outs:
            local = torch.cat(outs)
        else:  # an empty shard still takes part in the gather
            probe = fn(torch.zeros(1, dtype=torch.long, device=self.device),
                       torch.zeros((1,) + tuple(images[0][1].shape), dtype=torch.uint8, device=self.device))
            local = probe.float().cpu()[:0] if probe.is_floating_point() else probe.cpu()[:0]
        return self.gather(local, len(images))
