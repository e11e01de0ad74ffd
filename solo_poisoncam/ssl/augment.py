"""SSL view augmentation, batched on the device (uint8 batches in, normalised floats out).

One ``grid_sample`` does every crop, resize and flip of a batch, and colour jitter is a few
broadcast ops. Kept hand-written where a committed, side-by-side measurement shows them faster than
``kornia.augmentation`` (``python benchmarks/bench_augment.py``, ``benchmarks/results/augment.md``:
on a 256 x 3 x 32 x 32 CPU batch, Kornia's RandomResizedCrop + flip 1.8x, ColorJitter 2.6x,
RandomGrayscale 1.5x and RandomErasing 2.0x slower than these ops and ``ops/occlusion.py``).
Kornia supplies the Gaussian blur (``blur_p``) and the masking fill's blur.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)
# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _uniform(n: int, lo: float, hi: float, g: Optional[torch.Generator], device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def random_resized_crop(x: torch.Tensor, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample random resized crop (+ horizontal flip) of (B, C, H, W) floats to (B, C, size, size).

    Area fraction ~ U(scale), log aspect ~ U(log ratio), crop clipped to the image, bilinear.
    """
    b, dev = x.shape[0], x.device
    area = _uniform(b, *scale, generator, dev)
    logr = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    ar = torch.exp(logr)
    w = torch.sqrt(area * ar).clamp(max=1.0)  # fractions of the width / height
    h = torch.sqrt(area / ar).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator, device=dev) * (1 - w) + w / 2) * 2 - 1
    cy = (torch.rand(b, generator=generator, device=dev) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(b, generator=generator, device=dev) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (b, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue (YIQ rotation) jitter of [0, 1] (B, 3, H, W),
    applied with probability ``p`` each image, in that fixed order."""
    b, dev, dt = x.shape[0], x.device, x.dtype
    apply = (torch.rand(b, generator=generator, device=dev) < p).to(dt).view(b, 1, 1, 1)
    gray_w = torch.tensor(_GRAY, device=dev, dtype=dt).view(1, 3, 1, 1)
    y = x * _uniform(b, 1 - brightness, 1 + brightness, generator, dev).to(dt).view(b, 1, 1, 1)
    y = y.clamp(0, 1)
    mean = (y * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = ((y - mean) * _uniform(b, 1 - contrast, 1 + contrast, generator, dev).to(dt).view(b, 1, 1, 1) + mean).clamp(0, 1)
    g = (y * gray_w).sum(1, keepdim=True)
    y = ((y - g) * _uniform(b, 1 - saturation, 1 + saturation, generator, dev).to(dt).view(b, 1, 1, 1) + g).clamp(0, 1)
    if hue > 0:
        m = torch.tensor(_RGB2YIQ, device=dev, dtype=dt)
        yiq = torch.einsum("ij,bjhw->bihw", m, y)
        angle = _uniform(b, -hue, hue, generator, dev).to(dt) * 2 * math.pi
        cos, sin = torch.cos(angle).view(b, 1, 1), torch.sin(angle).view(b, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
        y = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq).clamp(0, 1)
    return apply * y + (1 - apply) * x


def random_grayscale(x: torch.Tensor, p: float = 0.2, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    b = x.shape[0]
    apply = (torch.rand(b, generator=generator, device=x.device) < p).to(x.dtype).view(b, 1, 1, 1)
    g = (x * torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return apply * g.expand_as(x) + (1 - apply) * x


class SSLAugment(nn.Module):
    """SimCLR/BYOL-style views: random resized crop + flip, colour jitter, grayscale (+ optional blur).

    Args:
        size: output side.
        crop_scale: RandomResizedCrop area range; 0.2-1 keeps a small trigger in view often enough
            (benchmarks/results/detection-main.md).
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], crop_scale: Tuple[float, float] = (0.2, 1.0),
                 jitter: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,
                 grayscale_p: float = 0.2, blur_p: float = 0.0):
        super().__init__()
        self.size, self.crop_scale = int(size), tuple(crop_scale)
        self.jitter, self.jitter_p, self.grayscale_p, self.blur_p = tuple(jitter), jitter_p, grayscale_p, blur_p
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 or [0, 1] float (B, 3, H, W) -> augmented, normalised float (B, 3, size, size)."""
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = random_resized_crop(x, self.size, self.crop_scale, generator=generator)
        x = color_jitter(x, *self.jitter, p=self.jitter_p, generator=generator)
        x = random_grayscale(x, self.grayscale_p, generator=generator)
        if self.blur_p > 0:
            import kornia.filters as KF

            k = max(3, (self.size // 10) | 1)
            sigma = float(_uniform(1, 0.1, 2.0, generator, x.device))
            blurred = KF.gaussian_blur2d(x, (k, k), (sigma, sigma))
            apply = (torch.rand(x.shape[0], generator=generator, device=x.device) < self.blur_p).view(-1, 1, 1, 1)
            x = torch.where(apply, blurred, x)
        return (x - self.mean) / self.std
