"""Batched masks for cluster activation masking: RISE grids, sliding occluders, fills and activation maps.

Convention: a mask value of 1 keeps the pixel, 0 hides it (replaces it by the fill); masks are
(M, 1, H, W) float in [0, 1], shared by every image of a batch, or (B, M, 1, H, W), one set per image.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
from einops import rearrange
from kornia.filters import gaussian_blur2d
from torch import nn

from solo_poisoncam.checks import check, check_pair, check_shape

Fill = Union[str, float, torch.Tensor]
FILLS = ("mean", "blur", "zero")


def _resolve_device(device, generator: Optional[torch.Generator]) -> torch.device:
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None:
        check(generator.device.type == device.type,
              f"generator is on {generator.device} but masks are requested on {device}; "
              f"create it with torch.Generator(device='{device.type}')")
    return device


def _bilinear_weights(src: torch.Tensor, size: int) -> torch.Tensor:
    """(M, n) source coordinates in [0, size-1] -> (M, n, size) bilinear interpolation weights (hat function)."""
    k = torch.arange(size, device=src.device, dtype=src.dtype)
    return (1 - (src[..., None] - k).abs()).clamp_min_(0)


def rise_masks(num_masks: int, height: int, width: int, grid: int = 4, p_keep: float = 0.5,
               generator: Optional[torch.Generator] = None, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RISE masks (Petsiuk et al., BMVC 2018): random coarse binary grids, smoothly upsampled and shifted.

    Each mask is a ``grid x grid`` Bernoulli(``p_keep``) grid, bilinearly upsampled to
    ``(grid + 1) * cell`` pixels (``cell = ceil(H / grid)``, resp. W) and cropped to H x W at a random
    shift in ``[0, cell)``. The upsample and the shifted crop are computed together, exactly, as one
    batched product ``Ry @ G @ Rx^T`` of per-mask interpolation matrices (no per-mask loop).

    Args:
        num_masks: M.
        height, width: mask size H, W.
        grid: cells per side of the random grid (RISE's ``s``).
        p_keep: probability that a cell is kept (value 1).
        generator: torch.Generator for reproducible masks; its device is used when ``device`` is None.
        device, dtype: of the output.

    Returns:
        (M, 1, H, W) in [0, 1], 1 = kept.

    >>> m = rise_masks(8, 6, 5, grid=2, generator=torch.Generator().manual_seed(0))
    >>> m.shape, bool(((m >= 0) & (m <= 1)).all())
    (torch.Size([8, 1, 6, 5]), True)
    """
    check(num_masks >= 1, f"num_masks must be >= 1, got {num_masks}")
    check(height >= 1 and width >= 1, f"mask size must be positive, got {height}x{width}")
    check(grid >= 1, f"grid must be >= 1, got {grid}")
    check(0.0 <= p_keep <= 1.0, f"p_keep must be in [0, 1], got {p_keep}")
    device = _resolve_device(device, generator)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    cells = (torch.rand(num_masks, grid, grid, generator=generator, device=device) < p_keep).to(work)

    def weights(n: int) -> torch.Tensor:  # (M, n, grid) interpolation matrix incl. the random shift
        cell = math.ceil(n / grid)
        shift = torch.randint(0, cell, (num_masks, 1), generator=generator, device=device).to(work)
        pos = shift + torch.arange(n, device=device, dtype=work)  # pixel rows in the upsampled grid
        # bilinear, align_corners=False: upsampled pixel r samples grid coordinate (r + .5) * grid / size - .5
        src = ((pos + 0.5) * (grid / ((grid + 1) * cell)) - 0.5).clamp_(0, grid - 1)
        return _bilinear_weights(src, grid)

    ry, rx = weights(height), weights(width)
    masks = torch.bmm(torch.bmm(ry, cells), rx.transpose(1, 2))  # (M, H, W)
    return masks.clamp_(0, 1).unsqueeze(1).to(dtype)


def _positions(extent: int, size: int, stride: int) -> torch.Tensor:
    """Starts 0, stride, 2*stride, ... <= extent - size, plus extent - size (flush with the border) if missing."""
    starts = list(range(0, extent - size + 1, stride))
    if starts[-1] != extent - size:
        starts.append(extent - size)
    return torch.tensor(starts, dtype=torch.long)


def occlusion_masks(height: int, width: int, size: Union[int, Sequence[int]], stride: Union[int, Sequence[int]],
                    device=None, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sliding square occluders (Zeiler & Fergus 2014) at every position of a stride grid.

    Per axis the occluder starts at 0, stride, 2*stride, ... while it fits, and one last position flush
    with the border is added when the grid misses it (6 px, size 3, stride 2: starts 0, 2, 3). Masks are
    ordered row-major (y outer, x inner).

    Args:
        height, width: image size H, W.
        size: occluder side (int, or (h, w)); must fit in the image.
        stride: step between positions (int, or (sy, sx)).
        device, dtype: of the masks.

    Returns:
        masks (M, 1, H, W), 0 inside the occluder and 1 elsewhere, and boxes (M, 4) long
        (x0, y0, x1, y1), x1/y1 exclusive.

    >>> masks, boxes = occlusion_masks(4, 4, size=2, stride=2)
    >>> boxes.tolist()
    [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 2, 4], [2, 2, 4, 4]]
    """
    sh, sw = check_pair(size, "size")
    th, tw = check_pair(stride, "stride")
    check(height >= 1 and width >= 1, f"image size must be positive, got {height}x{width}")
    check(sh <= height and sw <= width, f"occluder size {sh}x{sw} is larger than the image {height}x{width}")
    ys = _positions(height, sh, th).to(device)
    xs = _positions(width, sw, tw).to(device)
    y0, x0 = (t.reshape(-1) for t in torch.meshgrid(ys, xs, indexing="ij"))  # row-major
    boxes = torch.stack([x0, y0, x0 + sw, y0 + sh], dim=1)
    rows = torch.arange(height, device=ys.device)
    cols = torch.arange(width, device=ys.device)
    in_y = (rows >= y0[:, None]) & (rows < y0[:, None] + sh)  # (M, H)
    in_x = (cols >= x0[:, None]) & (cols < x0[:, None] + sw)  # (M, W)
    masks = ~(in_y[:, :, None] & in_x[:, None, :])
    return masks.unsqueeze(1).to(dtype), boxes


def _blur_kernel(n: int) -> int:
    """Odd kernel of about n/4 that reflect padding allows (pad < n)."""
    k = max(3, (n // 4) | 1)
    return min(k, 2 * n - 1)


def _fill_base(images: torch.Tensor, fill: Fill, mean: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The baseline, broadcastable to images (B, C, H, W); None for a zero fill."""
    b, c, h, w = images.shape
    if isinstance(fill, str):
        check(fill in FILLS, f"unknown fill '{fill}', choose one of {', '.join(FILLS)}, a number or a (C,) tensor")
        if fill == "zero":
            return None
        if fill == "blur":
            kh, kw = _blur_kernel(h), _blur_kernel(w)
            sigma = tuple(0.3 * ((k - 1) * 0.5 - 1) + 0.8 for k in (kh, kw))  # OpenCV's sigma for a kernel size
            return gaussian_blur2d(images, (kh, kw), sigma)
        if mean is None:
            return images.mean(dim=(2, 3), keepdim=True)  # each image's own channel mean
        fill = mean
    value = torch.as_tensor(fill, device=images.device, dtype=images.dtype)
    check(value.dim() == 0 or value.shape == (c,),
          f"fill value must be a number or a (C,) = ({c},) tensor, got shape {tuple(value.shape)}")
    return value.reshape(1, -1, 1, 1)


def fill_values(images: torch.Tensor, fill: Fill = "mean", mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The baseline images that hidden pixels are replaced with.

    Args:
        images: (B, C, H, W).
        fill: "mean" (``mean`` if given, else each image's channel mean), "blur" (Gaussian blur, kernel
            about H/4, odd), "zero", a number, or a (C,) tensor of per-channel values.
        mean: (C,) dataset channel mean used by ``fill="mean"``.

    Returns:
        (B, C, H, W).

    >>> fill_values(torch.tensor([[[[0., 2.], [4., 6.]]]]), "mean").flatten().tolist()
    [3.0, 3.0, 3.0, 3.0]
    """
    check_shape(images, ["B", "C", "H", "W"], "images")
    base = _fill_base(images, fill, mean)
    if base is None:
        return torch.zeros_like(images)
    return base.expand_as(images).clone()


def apply_masks(images: torch.Tensor, masks: torch.Tensor, fill: Fill = "mean",
                mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Masked copies of every image: ``x * m + base * (1 - m)`` for every mask, in one broadcast.

    Args:
        images: (B, C, H, W).
        masks: (M, 1, H, W) shared by all images, or (B, M, 1, H, W) per image; 1 = keep.
        fill, mean: the baseline, see :func:`fill_values`.

    Returns:
        (B * M, C, H, W), image-major: rows ``b * M ... b * M + M - 1`` are image b under masks 0..M-1.

    >>> x = torch.tensor([[[[1., 2.], [3., 4.]]]])
    >>> m = torch.tensor([[[[1., 0.], [0., 1.]]]])
    >>> apply_masks(x, m, fill="zero").flatten().tolist()
    [1.0, 0.0, 0.0, 4.0]
    """
    check_shape(images, ["B", "C", "H", "W"], "images")
    b, _, h, w = images.shape
    if masks.dim() == 4:
        check_shape(masks, ["M", "1", str(h), str(w)], "masks")
        m = rearrange(masks, "m 1 h w -> 1 m 1 h w")
    else:
        check_shape(masks, [str(b), "M", "1", str(h), str(w)], "masks")
        m = masks
    m = m.to(dtype=images.dtype)
    base = _fill_base(images, fill, mean)
    x = rearrange(images, "b c h w -> b 1 c h w")
    if base is None:
        out = x * m
    else:  # lerp(base, x, m) = base + m * (x - base), one fused kernel, exact at m = 0 and m = 1
        base = rearrange(base, "b c h w -> b 1 c h w")
        out = torch.lerp(base.expand_as(x), x, m)
    return rearrange(out, "b m c h w -> (b m) c h w")


class ApplyMasks(nn.Module):
    """Module form of :func:`apply_masks`.

    Args:
        fill: "mean", "blur", "zero", a number or a (C,) tensor (kept as a buffer, so it follows ``.to``).
        mean: (C,) dataset channel mean for ``fill="mean"`` (a buffer too).

    Shape:
        images (B, C, H, W), masks (M, 1, H, W) or (B, M, 1, H, W) -> (B * M, C, H, W).
    """

    def __init__(self, fill: Fill = "mean", mean: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if isinstance(fill, str):
            check(fill in FILLS, f"unknown fill '{fill}', choose one of {', '.join(FILLS)}, a number or a (C,) tensor")
            self.fill = fill
        else:
            self.fill = None
            self.register_buffer("fill_value", torch.as_tensor(fill, dtype=torch.float32), persistent=False)
        self.register_buffer("mean", None if mean is None else torch.as_tensor(mean, dtype=torch.float32),
                             persistent=False)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        fill = self.fill if self.fill is not None else self.fill_value
        return apply_masks(images, masks, fill=fill, mean=self.mean)

    def extra_repr(self) -> str:
        return f"fill={self.fill if self.fill is not None else self.fill_value.tolist()}"


def activation_map(drops: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Expected activation drop when a pixel is hidden: ``sum_m drop_m (1 - m_m) / sum_m (1 - m_m)``.

    Args:
        drops: (B, M) drop of the cluster activation of image b under mask m.
        masks: (M, 1, H, W) shared, or (B, M, 1, H, W) per image; 1 = keep.
        eps: pixels hidden by a total weight <= eps get 0.

    Returns:
        (B, H, W); 0 where no mask hides the pixel.

    >>> masks = torch.tensor([[[[0., 1.]]], [[[0., 0.]]]])  # (2, 1, 1, 2)
    >>> activation_map(torch.tensor([[1., 3.]]), masks).tolist()
    [[[2.0, 3.0]]]
    """
    check_shape(drops, ["B", "M"], "drops")
    b, m = drops.shape
    dtype = torch.promote_types(drops.dtype, masks.dtype)
    if masks.dim() == 4:
        check_shape(masks, [str(m), "1", "H", "W"], "masks")
        hidden = 1 - masks[:, 0].to(dtype)  # (M, H, W)
        num = torch.einsum("bm,mhw->bhw", drops.to(dtype), hidden)
        den = hidden.sum(0, keepdim=True)  # (1, H, W)
    else:
        check_shape(masks, [str(b), str(m), "1", "H", "W"], "masks")
        hidden = 1 - masks[:, :, 0].to(dtype)  # (B, M, H, W)
        num = torch.einsum("bm,bmhw->bhw", drops.to(dtype), hidden)
        den = hidden.sum(1)  # (B, H, W)
    return torch.where(den > eps, num / den.clamp_min(eps), torch.zeros_like(num))
