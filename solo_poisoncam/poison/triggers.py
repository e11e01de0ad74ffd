"""Trigger images: HTBA-like colour patterns generated from a seed, or any user PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
from PIL import Image

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.io import hash_file
from solo_poisoncam.registry import Registry

TRIGGERS: Registry = Registry("trigger")

# Saturated colours like the HTBA triggers of SSL-Backdoor (red, green, blue, yellow, white blobs, ...).
PALETTE = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 255, 255],
     [0, 0, 0], [255, 0, 255], [0, 255, 255], [255, 128, 0]], dtype=np.uint8)


@TRIGGERS.register("htba")
def htba_trigger(seed: int = 10, size: int = 64, grid: int = 4, smooth: bool = True) -> np.ndarray:
    """An HTBA-like trigger: a ``grid`` x ``grid`` layout of saturated colours upsampled to ``size``.

    ``smooth`` upsamples bicubically (colour blobs, the SSL-Backdoor look); otherwise nearest (a
    checkerboard of cells). The same seed always gives the same pixels.

    Returns:
        uint8 (size, size, 3).
    """
    check(size >= 1 and grid >= 2, f"htba trigger needs size >= 1 and grid >= 2, got {size}, {grid}")
    rng = np.random.default_rng(seed)
    while True:  # at least three distinct colours, or the "pattern" is a flat patch
        cells = rng.integers(0, len(PALETTE), size=(grid, grid))
        if len(np.unique(cells)) >= min(3, grid * grid):
            break
    small = Image.fromarray(PALETTE[cells])
    resample = Image.BICUBIC if smooth else Image.NEAREST
    return np.asarray(small.resize((size, size), resample))


@TRIGGERS.register("png")
def png_trigger(path: str) -> np.ndarray:
    """A user trigger image (any format PIL reads), converted to RGB uint8 (h, w, 3)."""
    p = Path(path)
    check(not p.is_dir(), f"trigger file '{path}' is a directory; give an image file")
    check(p.is_file(), f"trigger file '{path}' does not exist")
    try:
        with Image.open(p) as img:
            arr = np.asarray(img.convert("RGB"))
    except Exception as e:
        raise PoisonCamError(f"cannot read trigger file '{path}': {e}") from e
    check(arr.shape[0] >= 1 and arr.shape[1] >= 1, f"trigger file '{path}' is empty")
    return arr


def build_trigger(spec: Dict[str, Any]) -> np.ndarray:
    """Build a trigger from its spec, e.g. ``{"kind": "htba", "seed": 10}`` or ``{"kind": "png", "path": ...}``.

    A png spec that carries ``sha256`` must match the file (a changed trigger is a different attack).
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    check(kind is not None, f"trigger spec needs a 'kind' ({', '.join(TRIGGERS.names())}), got {spec}")
    digest = spec.pop("sha256", None)
    fn = TRIGGERS.get(kind)
    if kind == "png" and digest is not None:
        actual = hash_file(spec["path"])
        check(actual == digest, f"trigger file '{spec['path']}' changed since the manifest was written "
                                f"(sha256 {actual} != {digest})")
    try:
        return fn(**spec)
    except TypeError as e:
        raise PoisonCamError(f"bad arguments for trigger '{kind}': {e}") from e


def trigger_spec(kind: str, **kwargs: Any) -> Dict[str, Any]:
    """A complete, reproducible trigger spec (png triggers gain the file's hash)."""
    spec = {"kind": kind, **kwargs}
    if kind == "png":
        check("path" in kwargs, "a png trigger needs path=<file>")
        png_trigger(kwargs["path"])  # fail now on an unreadable file
        spec["path"] = str(Path(kwargs["path"]).resolve())
        spec["sha256"] = hash_file(kwargs["path"])
    else:
        TRIGGERS.get(kind)
    return spec
