"""Candidate trigger windows: the best window of an activation map, and batched crop / paste of windows.

Boxes are (x0, y0, x1, y1) long with x1, y1 exclusive; positions are (x0, y0).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from solo_poisoncam.checks import check, check_pair, check_shape


def max_sum_window(maps: torch.Tensor, size: Union[int, Sequence[int]]) -> torch.Tensor:
    """The window fully inside each map whose values sum highest (stride 1).

    Window sums are two 1-D box filters (every window summed in the same order, so equal windows tie
    exactly); ties go to the first window in row-major order.

    Args:
        maps: (B, H, W) activation maps.
        size: window side, int or (h, w); at most the map size.

    Returns:
        boxes (B, 4) long (x0, y0, x1, y1), x1/y1 exclusive.

    >>> m = torch.zeros(1, 4, 5); m[0, 1:3, 2:4] = 1.0
    >>> max_sum_window(m, 2).tolist()
    [[2, 1, 4, 3]]
    """
    check_shape(maps, ["B", "H", "W"], "maps")
    b, height, width = maps.shape
    h, w = check_pair(size, "window size")
    check(h <= height and w <= width, f"window {h}x{w} is larger than the map {height}x{width}")
    sums = _window_sums(maps, h, w)  # (B, H-h+1, W-w+1)
    out_w = width - w + 1
    best = sums.flatten(1).argmax(1)  # first maximum = first in row-major order
    y0 = torch.div(best, out_w, rounding_mode="floor")
    x0 = best - y0 * out_w
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _window_sums(maps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H, W) -> (B, H-h+1, W-w+1) sums of every h x w window (two 1-D box filters)."""
    x = maps[:, None]
    x = x.to(torch.float32) if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16) else x
    sums = F.avg_pool2d(x, (h, 1), stride=1, divisor_override=1)
    return F.avg_pool2d(sums, (1, w), stride=1, divisor_override=1)[:, 0]


def best_window(maps: torch.Tensor, sizes: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The square window, over positions and candidate ``sizes``, that best matches each map's hot region.

    The criterion is the normalised cross-correlation of the map with the window's indicator,
    ``(S - mu A) / sqrt(A (N - A))`` (S the window sum, A its area, N the map area, mu the map
    mean): for a map that is high on a t x t blob and flat elsewhere it peaks at the blob, with
    side t, where a fixed-size max-sum window would over- or under-shoot. Ties go to the smaller
    size, then row-major.

    Args:
        maps: (B, H, W).
        sizes: candidate sides, each at most min(H, W).

    Returns:
        boxes (B, 4) long (x0, y0, x1, y1), and the criterion (B,).

    >>> m = torch.zeros(1, 8, 8); m[0, 2:5, 3:6] = 1.0
    >>> best_window(m, [2, 3, 4])[0].tolist()
    [[3, 2, 6, 5]]
    """
    check_shape(maps, ["B", "H", "W"], "maps")
    b, height, width = maps.shape
    sizes = sorted({int(s) for s in sizes})
    check(len(sizes) > 0 and sizes[0] >= 1 and sizes[-1] <= min(height, width),
          f"window sizes must lie in [1, {min(height, width)}], got {sizes}")
    n = height * width
    mu = maps.flatten(1).float().mean(1)
    best_score = torch.full((b,), -float("inf"), device=maps.device)
    best_box = torch.zeros(b, 4, dtype=torch.long, device=maps.device)
    for s in sizes:  # a handful of sizes; each is one batched box filter
        area = s * s
        if area >= n:
            score_map = torch.zeros(b, 1, 1, device=maps.device)
        else:
            score_map = (_window_sums(maps, s, s) - mu[:, None, None] * area) / (area * (n - area)) ** 0.5
        flat = score_map.flatten(1)
        score, idx = flat.max(1)
        out_w = width - s + 1
        y0 = torch.div(idx, out_w, rounding_mode="floor")
        x0 = idx - y0 * out_w
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_box = torch.where(better[:, None], torch.stack([x0, y0, x0 + s, y0 + s], 1), best_box)
    return best_box, best_score


def _window_index(positions: torch.Tensor, h: int, w: int, width: int) -> torch.Tensor:
    """(B, 2) (x0, y0) -> (B, h * w) flat indices of the h x w windows in an image of the given width."""
    rows = positions[:, 1:2] + torch.arange(h, device=positions.device)  # (B, h)
    cols = positions[:, 0:1] + torch.arange(w, device=positions.device)  # (B, w)
    return (rows[:, :, None] * width + cols[:, None, :]).flatten(1)


def _check_inside(positions: torch.Tensor, h: int, w: int, height: int, width: int, what: str) -> None:
    limit = torch.tensor([width - w, height - h], device=positions.device)
    check(bool(((positions >= 0) & (positions <= limit)).all()),
          f"{what} of size {h}x{w} must lie inside the {height}x{width} images; got positions (x0, y0) "
          f"outside [0, {width - w}] x [0, {height - h}]")


def paste_patches(images: torch.Tensor, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Paste one patch into each image at its own position, in one scatter (no loop over the batch).

    Args:
        images: (B, C, H, W).
        patches: (B, C, h, w), one per image, or (C, h, w) pasted into every image.
        positions: (B, 2) long (x0, y0) of the patch's top-left corner; the patch must fit inside.

    Returns:
        (B, C, H, W), a new tensor (the input is untouched; differentiable in images and patches).

    >>> out = paste_patches(torch.zeros(1, 1, 3, 3), torch.ones(1, 2, 2), torch.tensor([[1, 0]]))
    >>> out[0, 0].tolist()
    [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    """
    check_shape(images, ["B", "C", "H", "W"], "images")
    b, c, height, width = images.shape
    if patches.dim() == 3:
        check_shape(patches, [str(c), "h", "w"], "patches")
        patches = patches.expand(b, -1, -1, -1)
    check_shape(patches, [str(b), str(c), "h", "w"], "patches")
    check_shape(positions, [str(b), "2"], "positions")
    h, w = patches.shape[-2:]
    check(h <= height and w <= width, f"patch {h}x{w} is larger than the images {height}x{width}")
    positions = positions.to(device=images.device, dtype=torch.long)
    _check_inside(positions, h, w, height, width, "patches")
    index = _window_index(positions, h, w, width)[:, None].expand(b, c, h * w)
    src = patches.to(dtype=images.dtype).reshape(b, c, h * w)
    return images.flatten(2).scatter(2, index, src).view(b, c, height, width)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop one box from each image, in one gather; all boxes must have the same size.

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) long (x0, y0, x1, y1), x1/y1 exclusive, inside the images.

    Returns:
        (B, C, h, w).

    >>> x = torch.arange(9.).view(1, 1, 3, 3)
    >>> crop_boxes(x, torch.tensor([[1, 0, 3, 2]]))[0, 0].tolist()
    [[1.0, 2.0], [4.0, 5.0]]
    """
    check_shape(images, ["B", "C", "H", "W"], "images")
    b, c, height, width = images.shape
    check_shape(boxes, [str(b), "4"], "boxes")
    check(b >= 1, "crop_boxes needs at least one image")
    boxes = boxes.to(device=images.device, dtype=torch.long)
    sizes = boxes[:, 2:] - boxes[:, :2]  # (B, 2) (w, h)
    w, h = sizes[0].tolist()
    check(bool((sizes == sizes[0]).all()), "all boxes passed to crop_boxes must have the same size")
    check(h >= 1 and w >= 1, f"boxes must be non-empty, got size {w}x{h} (w x h)")
    _check_inside(boxes[:, :2], h, w, height, width, "boxes")
    index = _window_index(boxes[:, :2], h, w, width)[:, None].expand(b, c, h * w)
    return images.flatten(2).gather(2, index).view(b, c, h, w)
