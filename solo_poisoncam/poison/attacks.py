"""Attacks: how a trigger is put on one raw image (before any augmentation).

Each attack exposes ``sample_box`` (where it goes, from an RNG) and ``apply`` (deterministic given the
box), so a manifest of boxes replays a poisoning exactly. Boxes are ``(x0, y0, x1, y1)`` pixel
coordinates with exclusive ends; non-patch attacks cover the whole image.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from solo_poisoncam.checks import check, check_number
from solo_poisoncam.poison.triggers import build_trigger
from solo_poisoncam.registry import Registry

ATTACKS: Registry = Registry("attack")

Box = Tuple[int, int, int, int]

TRAIN_REGION = (0.25, 0.75)  # SSL-Backdoor: top-left corner in the central region
EVAL_REGION = (0.10, 0.90)   # SSL-Backdoor patched validation set


class Attack:
    """Base class. ``is_patch`` says whether the trigger is local (masking can find it) or global."""

    name: str = "attack"
    is_patch: bool = False

    def config(self) -> Dict[str, Any]:
        raise NotImplementedError

    def sample_box(self, width: int, height: int, rng: np.random.Generator,
                   region: Optional[Sequence[float]] = None) -> Box:
        return (0, 0, width, height)

    def apply(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Return a poisoned copy of uint8 (H, W, 3) ``image``."""
        raise NotImplementedError

    def store(self, image: np.ndarray) -> np.ndarray:
        """An image the attack does not poison, as the poisoned set holds it (unchanged by default)."""
        return image


def _patch_side(size: float, width: int, height: int) -> int:
    """``size`` < 1 is a fraction of the shorter side, otherwise pixels."""
    side = int(size) if size >= 1 else max(1, round(size * min(width, height)))
    return side


@ATTACKS.register("patch")
class PatchAttack(Attack):
    """An opaque (``alpha=1``) or semi-transparent trigger patch pasted at a random place.

    Args:
        trigger: trigger spec (see :func:`build_trigger`), default HTBA pattern seed 10.
        size: patch side, as a fraction of the image's shorter side (< 1) or in pixels (>= 1).
            Default 50/224, SSL-Backdoor's 50 px on 224 px images. Non-square triggers keep their aspect.
        alpha: opacity of the patch; 1 replaces the pixels under it.
        region: (lo, hi) share of each side the whole patch lies in on the poisoned training images.
            Default SSL-Backdoor's central region (0.25, 0.75); where the patch does not fit (a 16 px
            patch on 32 px images) it sits at the region's centre, one position for every copy.
            (0.1, 0.9), the patched validation set's region, spreads it over many places.
        jpeg: if set, every image of the poisoned set, clean and poisoned alike (``store`` for the
            clean ones, so compression is no tell), is encoded as JPEG at this quality (1-95) and
            decoded, as SSL-Backdoor's generator leaves a poisoned image: it saves it under its own
            ``.JPEG`` name, so PIL writes JPEG at its default quality, 75 (its patched validation images
            too, and so here). Trigger copies then differ.
    """

    name = "patch"
    is_patch = True

    def __init__(self, trigger: Optional[Dict[str, Any]] = None, size: float = 50 / 224, alpha: float = 1.0,
                 region: Sequence[float] = TRAIN_REGION, jpeg: Optional[int] = None):
        self.trigger_spec = dict(trigger or {"kind": "htba", "seed": 10})
        self.trigger = build_trigger(self.trigger_spec)
        check_number(size, "patch size")
        check_number(alpha, "patch alpha")
        check(size > 0, f"patch size must be positive, got {size}")
        check(0 < alpha <= 1, f"patch alpha must be in (0, 1], got {alpha}")
        check(len(region) == 2 and 0 <= float(region[0]) < float(region[1]) <= 1,
              f"patch region must be (lo, hi) with 0 <= lo < hi <= 1, got {list(region)}")
        self.size, self.alpha = float(size), float(alpha)
        self.region = (float(region[0]), float(region[1]))
        if jpeg is not None:
            check_number(jpeg, "jpeg quality", whole=True)
            check(1 <= jpeg <= 95, f"jpeg quality must be in [1, 95], got {jpeg}")
        self.jpeg = None if jpeg is None else int(jpeg)
        self._resized = lru_cache(maxsize=32)(self._resize)

    def config(self) -> Dict[str, Any]:
        cfg = {"name": self.name, "trigger": self.trigger_spec, "size": self.size, "alpha": self.alpha}
        if self.region != TRAIN_REGION:  # manifests written before the field existed keep their hash
            cfg["region"] = list(self.region)
        if self.jpeg is not None:
            cfg["jpeg"] = self.jpeg
        return cfg

    def patch_shape(self, width: int, height: int) -> Tuple[int, int]:
        """(w, h) of the pasted patch on an image of this size."""
        w, h = self.trigger_shape(_patch_side(self.size, width, height))
        check(w <= width and h <= height,
              f"trigger of {w}x{h} px is larger than the {width}x{height} image; use a smaller size")
        return w, h

    def trigger_shape(self, side: int) -> Tuple[int, int]:
        """(w, h) of the trigger resized to ``side`` px on its longer side, aspect kept."""
        th, tw = self.trigger.shape[:2]
        if tw >= th:
            return side, max(1, round(side * th / tw))
        return max(1, round(side * tw / th)), side

    def _resize(self, w: int, h: int) -> np.ndarray:
        img = Image.fromarray(self.trigger)
        resample = Image.BILINEAR if (w < self.trigger.shape[1] or h < self.trigger.shape[0]) else Image.NEAREST
        return np.asarray(img.resize((w, h), resample, reducing_gap=None)).astype(np.float32)

    def sample_box(self, width: int, height: int, rng: np.random.Generator,
                   region: Optional[Sequence[float]] = None) -> Box:
        """A box in ``region`` (default: the attack's own training region)."""
        region = self.region if region is None else region
        w, h = self.patch_shape(width, height)
        x0 = _sample_start(width, w, region, rng)
        y0 = _sample_start(height, h, region, rng)
        return (x0, y0, x0 + w, y0 + h)

    def apply(self, image: np.ndarray, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = box
        out = image.copy()
        patch = self._resized(x1 - x0, y1 - y0)
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.rint(self.alpha * patch + (1 - self.alpha) * region).astype(np.uint8)
        return self.store(out)

    def store(self, image: np.ndarray) -> np.ndarray:
        return image if self.jpeg is None else jpeg_roundtrip(image, self.jpeg)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (H, W, 3) ``image`` encoded as JPEG at ``quality`` (PIL, 4:2:0 chroma) and decoded."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def _sample_start(extent: int, side: int, region: Sequence[float], rng: np.random.Generator) -> int:
    """Uniform top-left coordinate with the whole patch inside ``[lo, hi)`` of the side, if it fits."""
    lo = math.floor(region[0] * extent)
    hi = math.floor(region[1] * extent) - side
    if hi < lo:  # the region is too small for the patch: centre the allowed range on the region
        mid = (region[0] + region[1]) / 2 * extent - side / 2
        lo = hi = int(min(max(round(mid), 0), extent - side))
    return int(rng.integers(lo, hi + 1))


@ATTACKS.register("blend")
class BlendAttack(Attack):
    """A full-image pattern blended in with weight ``alpha`` (Chen et al. 2017 style); the box is the image."""

    name = "blend"

    def __init__(self, trigger: Optional[Dict[str, Any]] = None, alpha: float = 0.2):
        self.trigger_spec = dict(trigger or {"kind": "htba", "seed": 10, "grid": 8})
        self.trigger = build_trigger(self.trigger_spec)
        check_number(alpha, "blend alpha")
        check(0 < alpha < 1, f"blend alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)
        self._resized = lru_cache(maxsize=8)(self._resize)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "trigger": self.trigger_spec, "alpha": self.alpha}

    def _resize(self, w: int, h: int) -> np.ndarray:
        return np.asarray(Image.fromarray(self.trigger).resize((w, h), Image.BILINEAR)).astype(np.float32)

    def apply(self, image: np.ndarray, box: Box) -> np.ndarray:
        h, w = image.shape[:2]
        pattern = self._resized(w, h)
        return np.rint((1 - self.alpha) * image.astype(np.float32) + self.alpha * pattern).clip(0, 255).astype(np.uint8)


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix D (n, n): coefficients = D @ x @ D.T for an n x n block."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(x: np.ndarray) -> np.ndarray:
    y, cb, cr = x[..., 0], x[..., 1] - 128, x[..., 2] - 128
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


@ATTACKS.register("frequency")
class FrequencyAttack(Attack):
    """A CTRL-like trigger (Li et al. 2023): fixed DCT coefficients raised in the chroma channels.

    The image is split into ``window`` x ``window`` blocks (clipped to the image); in each block
    the DCT coefficients at ``positions`` of channels Cb and Cr gain ``magnitude``. Invisible to
    masking by design: the report states so.
    """

    name = "frequency"

    def __init__(self, magnitude: float = 100.0, window: int = 32,
                 positions: Sequence[Sequence[int]] = ((15, 15), (31, 31)), channels: Sequence[int] = (1, 2)):
        check_number(magnitude, "frequency magnitude")
        check_number(window, "frequency window", whole=True)
        check(magnitude > 0, f"frequency magnitude must be positive, got {magnitude}")
        check(window >= 2, f"frequency window must be >= 2, got {window}")
        self.magnitude, self.window = float(magnitude), int(window)
        self.positions = [tuple(int(v) for v in p) for p in positions]
        self.channels = [int(c) for c in channels]

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "magnitude": self.magnitude, "window": self.window,
                "positions": [list(p) for p in self.positions], "channels": self.channels}

    def apply(self, image: np.ndarray, box: Box) -> np.ndarray:
        h, w = image.shape[:2]
        n = min(self.window, h, w)
        d = dct_matrix(n)
        ycc = rgb_to_ycbcr(image.astype(np.float64))
        for c in self.channels:
            for y0 in range(0, h - n + 1, n):
                for x0 in range(0, w - n + 1, n):
                    block = d @ ycc[y0:y0 + n, x0:x0 + n, c] @ d.T
                    for (u, v) in self.positions:
                        block[min(u, n - 1), min(v, n - 1)] += self.magnitude
                    ycc[y0:y0 + n, x0:x0 + n, c] = d.T @ block @ d
        return np.rint(ycbcr_to_rgb(ycc)).clip(0, 255).astype(np.uint8)


def build_attack(config: Dict[str, Any]) -> Attack:
    """Build an attack from ``{"name": ..., **kwargs}`` (the ``config()`` of any attack)."""
    config = dict(config)
    name = config.pop("name", None)
    check(name is not None, f"attack config needs a 'name' ({', '.join(ATTACKS.names())})")
    cls = ATTACKS.get(name)
    try:
        return cls(**config)
    except TypeError as e:
        from solo_poisoncam.checks import PoisonCamError

        raise PoisonCamError(f"bad arguments for attack '{name}': {e}") from e
