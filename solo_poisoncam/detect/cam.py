"""Cluster activation masking (PoisonCAM, docs/design.md, method steps 3-5).

For every image: its cluster c under the cluster head and activation a_c(x) = p(c | x); the drop
of a_c under each of M masks (all masked copies of a batch made in one broadcast and forwarded
in large chunks); the activation map = expected drop when a pixel is hidden; the candidate
trigger window on that map; and the drop when only that window is hidden (the poison score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.window import best_window, max_sum_window
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.ops.masks import activation_map, apply_masks
from solo_poisoncam.ops.occlusion import box_masks
from solo_poisoncam.timing import StageClock


class ClusterActivation(nn.Module):
    """a_c(x): softmax probability of cluster c for images in [0, 1] (the frozen threat model + head)."""

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        f = self.model(x)
        with torch.autocast(f.device.type, enabled=False):  # the head in float32: drops are small differences
            return self.head(f.float())

    def forward(self, x: torch.Tensor, clusters: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        out = [F.softmax(self.logits(x[s:s + chunk]), 1).gather(1, clusters[s:s + chunk, None])[:, 0]
               for s in range(0, len(x), chunk)]
        return torch.cat(out)

    def own_cluster(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(c, a_c(x)): each unmasked image's own cluster and its activation there."""
        logits = self.logits(x)
        clusters = logits.argmax(1)
        return clusters, F.softmax(logits, 1).gather(1, clusters[:, None])[:, 0]


def cluster_activation(model, head_state: Dict[str, torch.Tensor], temperature: float) -> ClusterActivation:
    """a_c of the threat model with a cosine head loaded from ``head_state``."""
    head = CosineClusterHead(head_state["weight"], temperature)
    head.load_state_dict(head_state)
    return ClusterActivation(model, head.eval()).eval()


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
        clusters, base = act.own_cluster(x)
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
    clusters, base = act.own_cluster(x)
    return masked_maps(act, x, clusters, base, masks.to(device), _to(fill, device), forward_batch).cpu()


def _to(fill, device):
    """Fills are tensors (moved to the device) or the string "blur"."""
    return fill.to(device) if isinstance(fill, torch.Tensor) else fill


def _centred_boxes(centre: torch.Tensor, sizes: torch.Tensor, offsets: torch.Tensor, side: int) -> torch.Tensor:
    """(B, 2) centres, (B,) or (B, P) sides, (P, 2) offsets -> (B, P, 4) square boxes kept inside the image."""
    b = centre.shape[0]
    p = offsets.shape[0]
    s = sizes.view(b, 1).expand(b, p) if sizes.dim() == 1 else sizes
    x0 = (centre[:, None, 0] - s / 2).round() + offsets[None, :, 0]
    y0 = (centre[:, None, 1] - s / 2).round() + offsets[None, :, 1]
    x0 = torch.minimum(x0.clamp_min(0), side - s)
    y0 = torch.minimum(y0.clamp_min(0), side - s)
    return torch.stack([x0, y0, x0 + s, y0 + s], -1).long()


def _drops(act: ClusterActivation, x: torch.Tensor, clusters: torch.Tensor, base: torch.Tensor, boxes: torch.Tensor,
           fill, forward_batch: int) -> torch.Tensor:
    """(B, P) activation drops when each candidate box (B, P, 4) alone is hidden."""
    b, p, _ = boxes.shape
    side = x.shape[-1]
    masks = box_masks(boxes.view(-1, 4), side, side).view(b, p, 1, side, side)
    hidden = apply_masks(x, masks, fill=fill)
    a = act(hidden, clusters.repeat_interleave(p), chunk=forward_batch).view(b, p)
    return base[:, None] - a


def _plateau_centre(boxes: torch.Tensor, drops: torch.Tensor, rel: float = 0.99) -> torch.Tensor:
    """(B, 2) mean centre of the candidate boxes whose drop is within ``rel`` of the best: a window
    larger than the trigger hides it from a square of positions, whose centre is the trigger's."""
    best = drops.max(1, keepdim=True).values
    near = (drops >= best * rel) | (drops == best)  # the best itself also when the drops are negative
    centres = (boxes[..., :2] + boxes[..., 2:]).float() / 2  # (B, P, 2)
    w = near.float()[..., None]
    return (centres * w).sum(1) / w.sum(1)


# masked forwards per window refine_windows sharpens: 7 x 7 positions, 9 sides, 5 x 5 positions, the final box
REFINE_FORWARDS = 7 * 7 + 9 + 5 * 5 + 1


@torch.no_grad()
def refine_windows(act: ClusterActivation, images: IndexedImages, windows: torch.Tensor, fill, runner: Runner,
                   size_range, tau: float = 0.9, batch_size: int = 64, forward_batch: int = 4096):
    """Sharpen coarse candidate windows by masking exactly the candidates (PoisonCAM's own criterion).

    Around each coarse window (rows of ``windows`` align with ``images``): (1) the centre of the
    best positions of its size within +-3 steps, (2) the smallest side, centred there, whose drop
    reaches ``tau`` of the best drop seen, (3) the centre of the best positions of that side within
    +-2 steps. A step is 1/32 of the image side (1 px at 32 px). ``REFINE_FORWARDS`` (84) forward passes per image.

    Returns:
        windows (N, 4) and their drops (N,).
    """
    act = act.to(runner.device).eval()
    fill = _to(fill, runner.device)
    by_index = {int(i): j for j, i in enumerate(images.indexes)}
    windows_dev = windows.to(runner.device)
    lo, hi = size_range

    def fn(idx, x):
        side = x.shape[-1]
        step = max(1, side // 32)
        rows = torch.as_tensor([by_index[int(i)] for i in idx.tolist()], device=x.device)
        x = x.float() / 255
        clusters, base = act.own_cluster(x)
        coarse = windows_dev[rows].float()
        centre = (coarse[:, :2] + coarse[:, 2:]) / 2
        size = coarse[:, 2] - coarse[:, 0]

        def grid(r):
            d = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32) * step
            return torch.stack(torch.meshgrid(d, d, indexing="xy"), -1).view(-1, 2)

        boxes = _centred_boxes(centre, size, grid(3), side)                      # (1) position
        d = _drops(act, x, clusters, base, boxes, fill, forward_batch)
        best_drop = d.max(1).values
        centre = _plateau_centre(boxes, d)
        sides = (size[:, None] + torch.arange(-4, 5, device=x.device)[None] * step).clamp(lo, hi)  # (2) size
        boxes = _centred_boxes(centre, sides, torch.zeros(sides.shape[1], 2, device=x.device), side)
        d = _drops(act, x, clusters, base, boxes, fill, forward_batch)
        target = tau * torch.maximum(d.max(1).values, best_drop)
        ok = d >= target[:, None]
        side_pick = torch.where(ok, sides, torch.full_like(sides, float("inf"))).min(1).values
        side_pick = torch.where(torch.isinf(side_pick), size, side_pick)
        boxes = _centred_boxes(centre, side_pick, grid(2), side)                 # (3) position again
        d = _drops(act, x, clusters, base, boxes, fill, forward_batch)
        final = _centred_boxes(_plateau_centre(boxes, d), side_pick, torch.zeros(1, 2, device=x.device), side)[:, 0]
        final_drop = _drops(act, x, clusters, base, final[:, None], fill, forward_batch)[:, 0]
        return torch.cat([final.float(), final_drop[:, None]], 1)

    rows = runner.map_images(fn, images, batch_size=batch_size, desc="refine windows")
    return rows[:, :4].long(), rows[:, 4]
