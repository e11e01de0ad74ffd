"""Random square occlusions per dataset index: the augmentation the cluster head is fine-tuned under.

Boxes are drawn once for every index from one generator, so the occluded views do not depend on
how images are batched or sharded across ranks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from solo_poisoncam.checks import check


def random_occlusion_boxes(n: int, height: int, width: int, area: Tuple[float, float] = (0.02, 0.25),
                           p: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, 4) long boxes (x0, y0, x1, y1): a square of area fraction ~ U(area) with probability ``p``,
    else an empty box."""
    check(0 < area[0] <= area[1] <= 1, f"occlusion area range must lie in (0, 1], got {area}")
    frac = torch.rand(n, generator=generator) * (area[1] - area[0]) + area[0]
    side = (frac * height * width).sqrt().round().clamp(1, min(height, width)).long()
    x0 = (torch.rand(n, generator=generator) * (width - side + 1)).long()
    y0 = (torch.rand(n, generator=generator) * (height - side + 1)).long()
    on = torch.rand(n, generator=generator) < p
    side = torch.where(on, side, torch.zeros_like(side))
    return torch.stack([x0, y0, x0 + side, y0 + side], 1)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4) boxes -> (B, 1, H, W) float masks, 0 inside the box (hidden), 1 elsewhere."""
    ys = torch.arange(height, device=boxes.device).view(1, height, 1)
    xs = torch.arange(width, device=boxes.device).view(1, 1, width)
    b = boxes.view(-1, 4, 1, 1)
    inside = (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])
    return (~inside).float()[:, None]
