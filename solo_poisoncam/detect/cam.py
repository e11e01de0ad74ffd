"""Cluster activation masking (PoisonCAM, DESIGN.md steps 3-5).

For every image: its cluster c under the cluster head and activation a_c(x) = p(c | x); the drop
of a_c under each of M masks (all masked copies of a batch made in one broadcast and forwarded
in large chunks); the activation map = expected drop when a pixel is hidden; the candidate
trigger window on that map; and the drop when only that window is hidden (the poison score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.masks import activation_map, apply_masks
from solo_poisoncam.detect.occlusion import box_masks
from solo_poisoncam.detect.runner import Runner
from solo_poisoncam.detect.window import best_window, max_sum_window
from solo_poisoncam.timing import StageClock


class ClusterActivation(nn.Module):
    """a_c(x): softmax probability of cluster c for images in [0, 1] (the frozen threat model + head)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x).float())

    def forward(self, x: torch.Tensor, clusters: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        out = [F.softmax(self.logits(x[s:s + chunk]), 1).gather(1, clusters[s:s + chunk, None])[:, 0]
               for s in range(0, len(x), chunk)]
        return torch.cat(out)


@dataclass
class CamResult:
    """Per-image outputs of :func:`cluster_activation_masking`, aligned with ``images.indexes``."""

    clusters: torch.Tensor      # (N,) long, cluster under the head
    activation: torch.Tensor    # (N,) a_c(x)
    windows: torch.Tensor       # (N, 4) long candidate trigger boxes (x0, y0, x1, y1) in input pixels
    window_drop: torch.Tensor   # (N,) a_c(x) - a_c(x with only the window hidden)
    map_peak: torch.Tensor      # (N,) maximum of the activation map

    @classmethod
    def from_rows(cls, rows: torch.Tensor) -> "CamResult":
        return cls(rows[:, 0].long(), rows[:, 1], rows[:, 2:6].long(), rows[:, 6], rows[:, 7])


def window_sizes(side: int, window: object, min_frac: float = 0.1, max_frac: float = 0.5) -> Sequence[int]:
    """Candidate window sides: ``"auto"`` = every side in [min_frac, max_frac] of the image side;
    an int >= 1 = that side; a float < 1 = that fraction of the side."""
    if window == "auto":
        return list(range(max(1, round(min_frac * side)), max(1, round(max_frac * side)) + 1))
    w = float(window)
    return [int(w) if w >= 1 else max(1, round(w * side))]


@torch.no_grad()
def masked_maps(act: ClusterActivation, x: torch.Tensor, clusters: torch.Tensor, base: torch.Tensor,
                masks: torch.Tensor, fill, forward_batch: int, clock: Optional[StageClock] = None) -> torch.Tensor:
    """Activation maps (B, H, W) of [0, 1] images ``x`` (B, 3, H, W) under shared masks (M, 1, H, W).

    ``clock`` (optional) splits the time into "mask" (applying masks, building the map) and
    "forward" (the model on the masked images), the masking-overhead measurement.
    """
    clock = clock or StageClock(torch.device("cpu"))
    m = masks.shape[0]
    per_chunk = max(1, forward_batch // m)  # images per forward chunk, so B*M never sits in memory at once
    drops = []
    for s in range(0, len(x), per_chunk):
        with clock("mask"):
            xm = apply_masks(x[s:s + per_chunk], masks, fill=fill)
        with clock("forward", len(xm)):
            a = act(xm, clusters[s:s + per_chunk].repeat_interleave(m), chunk=forward_batch).view(-1, m)
        drops.append(base[s:s + per_chunk, None] - a)
    with clock("mask"):
        return activation_map(torch.cat(drops), masks)


@torch.no_grad()
def cluster_activation_masking(act: ClusterActivation, images: IndexedImages, masks: torch.Tensor, fill: torch.Tensor,
                               runner: Runner, window: object = "auto", window_range=(0.1, 0.5),
                               batch_size: int = 256, forward_batch: int = 4096,
                               clock: Optional[StageClock] = None) -> CamResult:
    """Masks, maps, candidate windows and window drops for every image (sharded by the runner)."""
    act = act.to(runner.device).eval()
    masks = masks.to(runner.device)
    fill = _to(fill, runner.device)
    side = masks.shape[-1]
    sizes = window_sizes(side, window, *window_range)

    def fn(_, x):
        x = x.float() / 255
        logits = act.logits(x)
        clusters = logits.argmax(1)
        base = F.softmax(logits, 1).gather(1, clusters[:, None])[:, 0]
        maps = masked_maps(act, x, clusters, base, masks, fill, forward_batch, clock)
        boxes = best_window(maps, sizes)[0] if len(sizes) > 1 else max_sum_window(maps, sizes[0])
        only = apply_masks(x, box_masks(boxes, side, side)[:, None], fill=fill)
        drop = base - act(only, clusters, chunk=forward_batch)
        return torch.cat([clusters[:, None].float(), base[:, None], boxes.float(), drop[:, None],
                          maps.flatten(1).max(1).values[:, None]], 1)

    rows = runner.map_images(fn, images, batch_size=batch_size, desc="cluster activation masking")
    return CamResult.from_rows(rows)


@torch.no_grad()
def maps_for(act: ClusterActivation, x_uint8: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor,
             device: torch.device, forward_batch: int = 4096) -> torch.Tensor:
    """Activation maps (B, H, W) for a few images (the report's gallery)."""
    act = act.to(device).eval()
    x = x_uint8.to(device).float() / 255
    logits = act.logits(x)
    clusters = logits.argmax(1)
    base = F.softmax(logits, 1).gather(1, clusters[:, None])[:, 0]
    return masked_maps(act, x, clusters, base, masks.to(device), _to(fill, device), forward_batch).cpu()


def _to(fill, device):
    """Fills are tensors (moved to the device) or the string "blur"."""
    return fill.to(device) if isinstance(fill, torch.Tensor) else fill
