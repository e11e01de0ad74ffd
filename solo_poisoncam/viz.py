"""Small image grids with boxes and heat-map overlays (PIL only)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

TRUE_COLOUR = (0, 220, 0)     # ground-truth trigger box
PRED_COLOUR = (255, 40, 40)   # detected window


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a (H, W) map (any range) over a uint8 (H, W, 3) image with a blue-to-red ramp."""
    h = heat.astype(np.float64)
    h = (h - h.min()) / (h.max() - h.min() + 1e-12)
    ramp = np.stack([h, 1 - np.abs(2 * h - 1), 1 - h], axis=-1) * 255
    out = (1 - alpha) * image.astype(np.float64) + alpha * ramp
    return out.clip(0, 255).astype(np.uint8)


def tile(images: Sequence[np.ndarray], boxes: Optional[Sequence[Sequence[Tuple[Sequence[int], tuple]]]] = None,
         scale: int = 4, columns: int = 8, captions: Optional[Sequence[str]] = None, pad: int = 4) -> Image.Image:
    """A grid of uint8 (H, W, 3) images upscaled ``scale`` x (nearest), with boxes drawn.

    ``boxes[i]`` is a list of ``(box, colour)`` for image i, box in the image's pixel coordinates
    (x0, y0, x1, y1), exclusive ends.
    """
    if len(images) == 0:
        return Image.new("RGB", (64, 16), "white")
    h = max(im.shape[0] for im in images) * scale
    w = max(im.shape[1] for im in images) * scale
    cap_h = 12 if captions else 0
    cols = min(columns, len(images))
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad + cap_h) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + pad + cap_h)
        tile_img = Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST)
        grid.paste(tile_img, (x, y))
        for box, colour in (boxes[i] if boxes is not None else []):
            x0, y0, x1, y1 = (int(v) * scale for v in box)
            lw = max(1, scale // 2)  # drawn just outside the box so the trigger stays visible
            # a dark halo, then the colour: visible over any image, colourful triggers included
            draw.rectangle([x + x0 - 2 * lw, y + y0 - 2 * lw, x + x1 - 1 + 2 * lw, y + y1 - 1 + 2 * lw],
                           outline=(0, 0, 0), width=lw)
            draw.rectangle([x + x0 - lw, y + y0 - lw, x + x1 - 1 + lw, y + y1 - 1 + lw], outline=colour, width=lw)
        if captions:
            draw.text((x, y + h + 1), str(captions[i])[: max(4, w // 6)], fill=(0, 0, 0))
    return grid


def save_png(image: Image.Image, path) -> None:
    from solo_poisoncam.io import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
