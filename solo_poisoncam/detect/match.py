"""Removal by pattern match, and where the trigger is in each removed image (docs/design.md, method
step 7).

``match``: remove every image that holds a confirmed trigger window's pattern (normalised cross-
correlation above ``ncc`` and RMSE below ``rmse`` at one position: ``detect/verdict.py: pattern_errors``).

Extent: a confirmed window is where the activation map pointed, not the trigger's outline; it may
hold part of the trigger and some of its image. The pasted pixels are the same in every copy and the
image around them is not, so the trigger is the connected region around the window where the
window's image agrees, pixel by pixel, with more of the images the pattern matched in (aligned at
the match) than of images it did not match in (aligned alike): the second share is the base rate of
pixels any image shares, such as a black background or a garment that every poisoned image shows
when the whole target class is poisoned. Each removed image's window is that region at the place its
best match sits. No labels and no trigger: only the images and the confirmed windows.

Second scan: a window that holds a strip of its own image beside the trigger matches only the copies
whose strip agrees (on Fashion-MNIST, 1% of the set, with occluders of 1/4 and 1/2 of the side: 14 of
50 poisons). Its extent is the trigger alone, so every image is scanned again for the extent's pattern
where the extent differs from the window and is no smaller than the window's core (half its side, the
least the verdict asks exactness of: ``detect/verdict.py: core_boxes``); an image is removed when
either pattern matches.
"""

from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from solo_poisoncam.checks import check
from solo_poisoncam.detect.handoff import Removed
from solo_poisoncam.detect.stages import stage
from solo_poisoncam.detect.verdict import Pool, crop_errors, pattern_errors
from solo_poisoncam.detect.window import crop_boxes


def match_scan(src_images: torch.Tensor, boxes: torch.Tensor, images, ncc: float = 0.9, rmse: float = 0.1,
               chunk: int = 1024, progress: bool = False, device=None):
    """Every image against every window: ((N, T) RMSE of the best position, inf = none below ``rmse``;
    (N, T, 2) int32 top-left (x, y) of that position). ``images``: ``take(positions)`` -> uint8 (B, 3, S, S).
    ``progress``: a bar on a terminal; ``device``: where the search runs."""
    n = len(images)
    errs, ats = [], []
    for i in _bar(range(0, n, chunk), progress, f"match: {len(boxes)} patterns"):
        e, a = pattern_errors(src_images, boxes, images.take(np.arange(i, min(n, i + chunk))), ncc, where=True,
                              below=rmse, device=device)
        errs.append(e.cpu())
        ats.append(a.to(torch.int32).cpu())  # positions < side: int32 halves what N x T positions hold
    return torch.cat(errs), torch.cat(ats)


def _bar(steps, progress: bool, desc: str):
    """``steps`` with a progress bar where ``progress`` and standard error is a terminal."""
    return tqdm(steps, desc=desc, leave=False, disable=not (progress and sys.stderr.isatty()))


def _agreement(a: torch.Tensor, images: torch.Tensor, shift: torch.Tensor, tol: float):
    """Per pixel of ``a`` (3, S, S) in [0, 1]: how many of ``images`` (uint8, aligned by ``shift``) agree
    with it and how many cover it (an image shifted off the pixel does not)."""
    side = a.shape[-1]
    grid = torch.arange(side)
    rows, cols = grid + shift[:, 1:2], grid + shift[:, 0:1]  # (C, S) each: the aligned pixels of every image
    valid = (((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None, :])  # (C, S, S)
    c, ch = torch.arange(len(images)), torch.arange(a.shape[0])
    aligned = images[c[:, None, None, None], ch[None, :, None, None], rows.clamp(0, side - 1)[:, None, :, None],
                     cols.clamp(0, side - 1)[:, None, None, :]]
    d = (a - aligned.float() / 255).abs().amax(1)  # (C, S, S)
    return (valid & (d < tol)).sum(0).float(), valid.sum(0).float()


@torch.no_grad()
def trigger_extent(template: torch.Tensor, box, copies: torch.Tensor, at: torch.Tensor, tol: float = 0.1,
                   agree: float = 0.5, others: Optional[torch.Tensor] = None, reach=None) -> np.ndarray:
    """The trigger's box (x0, y0, x1, y1) in ``template``'s pixels, grown or shrunk from ``box``.

    Args:
        template: uint8 (3, S, S), the image the confirmed window ``box`` was cut from.
        copies: uint8 (C, 3, S, S), images the window's pattern matched in; ``at`` (C, 2) the top-left
            (x, y) of each match.
        tol: a pixel agrees with a copy when its largest channel difference is below this (in [0, 1]).
        agree: a pixel is the trigger's when the share of the copies that cover it and agree exceeds
            the share of ``others`` that do by at least this; the region is the 8-connected one through
            the window's such pixels, at most the window grown by its own size on each side (or the
            box ``reach``: a part of a window may sit anywhere in the trigger, which the window holds).
        others: uint8 (M, 3, S, S), images the pattern did not match in (the base rate), aligned with
            the copies' shifts in turn; none: a base rate of 0.

    With no copy, or no such pixel inside the window, the window itself.
    """
    box = [int(v) for v in box]
    if len(copies) == 0:
        return np.asarray(box, dtype=np.int64)
    side = template.shape[-1]
    a = template.float() / 255
    shift = at.long() - torch.tensor(box[:2])  # (C, 2): a copy's pixel (y + sy, x + sx) is the template's (y, x)
    count, cover = _agreement(a, copies, shift, tol)
    share = count / cover.clamp(min=1)
    base = torch.zeros(side, side)
    if others is not None and len(others):
        ocount, ocover = _agreement(a, others, shift[torch.arange(len(others)) % len(shift)], tol)
        base = ocount / ocover.clamp(min=1)
    w, h = box[2] - box[0], box[3] - box[1]
    region = torch.zeros(side, side, dtype=torch.bool)
    x0, y0, x1, y1 = (box[0] - w, box[1] - h, box[2] + w, box[3] + h) if reach is None else [int(v) for v in reach]
    region[max(0, y0):min(side, y1), max(0, x0):min(side, x1)] = True
    mask = (share - base >= agree) & (cover >= max(1, len(copies) // 2)) & region
    inside = torch.zeros_like(mask)
    inside[box[1]:box[3], box[0]:box[2]] = True
    comp = mask & inside
    if not comp.any():
        return np.asarray(box, dtype=np.int64)
    while True:  # flood fill of the agreeing pixels from the window's
        grown = F.max_pool2d(comp[None, None].float(), 3, 1, 1)[0, 0].bool() & mask
        if torch.equal(grown, comp):
            break
        comp = grown
    ys, xs = torch.nonzero(comp, as_tuple=True)
    return np.array([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], dtype=np.int64)


def match_removal(images, src_pos: np.ndarray, boxes: np.ndarray, ncc: float = 0.9, rmse: float = 0.1,
                  copies: int = 64, tol: float = 0.1, agree: float = 0.5,
                  reach: Optional[np.ndarray] = None, scales: Sequence[float] = (),
                  progress: bool = False, device=None) -> Dict[str, np.ndarray]:
    """Remove every image that holds one of the confirmed windows' patterns, and place the trigger in it.

    Args:
        images: the training images (``take(positions)`` -> uint8 (B, 3, S, S)).
        src_pos: (T,) positions of the confirmed windows' images; ``boxes`` (T, 4) their windows.
        copies: the extent of a window is measured on at most this many of its matches (the closest),
            against as many images it did not match in (spread evenly over the set: the base rate).
        reach: (T, 4) the box each window's extent may grow in (:func:`trigger_extent`); a row of -1, or
            none: the window grown by its own size on each side.
        scales: each extent is also looked for resized by these factors (:func:`scaled_scan`): a trigger
            pasted at each file's own resolution reaches the model at another size in each image.
        progress: a bar per scan on a terminal; ``device``: where the scans run (the detector's).

    Returns ``removed`` (N,) bool, ``windows`` (N, 4) the trigger box in each removed image (-1 rows
    elsewhere), ``template`` (N,) the window whose pattern (its own or its extent's) matched best (-1:
    none), ``extents`` (T, 4) and ``rescanned`` the windows whose extent was scanned again.
    """
    src_pos = np.asarray(src_pos, dtype=np.int64)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    check(len(src_pos) == len(boxes) and len(boxes) > 0, "match_removal needs one source position per window")
    src = images.take(src_pos)  # the windows' own images, read once
    err, at = match_scan(src, torch.as_tensor(boxes), images, ncc, rmse, progress=progress, device=device)
    hit = err < rmse
    extents = np.empty_like(boxes)
    for t in range(len(boxes)):
        e = err[:, t].clone()
        e[int(src_pos[t])] = float("inf")  # the window's own image agrees with itself everywhere
        rows = torch.nonzero(e < rmse).flatten()
        rows = rows[torch.argsort(e[rows], stable=True)[:copies]]
        if len(rows) == 0:  # matched only in its own image: nothing to compare with
            extents[t] = boxes[t]
            continue
        misses = np.flatnonzero(~hit[:, t].numpy())
        others = misses[np.linspace(0, len(misses) - 1, min(copies, len(misses))).astype(np.int64)] if len(misses) else misses
        extents[t] = trigger_extent(src[t], boxes[t], images.take(rows.numpy()), at[rows, t], tol, agree,
                                    images.take(others) if len(others) else None,
                                    None if reach is None or (reach[t] < 0).all() else reach[t])
    # the extents scanned again (module docstring): each column of err / at is then one pattern, the windows
    # and these extents, ``owner`` the window it came from
    again = np.flatnonzero((extents != boxes).any(1) & (2 * (extents[:, 2:] - extents[:, :2])
                                                        >= boxes[:, 2:] - boxes[:, :2]).all(1))
    owner, patterns = np.concatenate([np.arange(len(boxes)), again]), np.concatenate([boxes, extents[again]])
    if len(again):
        err2, at2 = match_scan(src[torch.as_tensor(again)], torch.as_tensor(extents[again]), images, ncc, rmse,
                                progress=progress, device=device)
        err, at = torch.cat([err, err2], 1), torch.cat([at, at2], 1)
    offset = extents[owner] - np.tile(patterns[:, :2], 2)  # the trigger's box from the top-left of a match
    any_hit, best = _least_hit(err, rmse)
    removed = any_hit.numpy()
    n, side = len(removed), int(src.shape[-1])
    windows = np.full((n, 4), -1, dtype=np.int64)
    rows = np.flatnonzero(removed)
    col = best[rows].numpy()
    where = at[torch.as_tensor(rows), torch.as_tensor(col)].numpy().reshape(-1, 2)
    windows[rows] = np.clip(np.tile(where, 2) + offset[col], 0, side)
    template = np.full(n, -1, dtype=np.int64)
    template[rows] = owner[col]
    scaled = np.zeros(n, dtype=bool)
    if len(scales):  # what no copy at the extents' own size matched: the extents resized
        rest = np.flatnonzero(~removed)
        s_col, s_box, s_owner = scaled_scan(src, extents, images, rest, scales, ncc, rmse, progress=progress,
                                            device=device)
        hit_s = s_col >= 0
        rows = rest[hit_s]
        removed[rows], scaled[rows] = True, True
        windows[rows] = s_box[hit_s]
        template[rows] = s_owner[s_col[hit_s]]
    return {"removed": removed, "windows": windows, "template": template, "extents": extents,
            "rescanned": again, "scaled": scaled}


def scaled_scan(src: torch.Tensor, extents: np.ndarray, images, rows: np.ndarray, scales: Sequence[float],
                ncc: float = 0.9, rmse: float = 0.1, chunk: int = 1024, progress: bool = False, device=None):
    """The images at positions ``rows`` against every extent resized by each of ``scales`` (bilinear,
    antialiased; sides of 4 px up to the image's): per image the rescaled pattern with the least RMSE
    below ``rmse`` ((R,) its column, the first on ties, -1 = none) and its box ((R, 4), -1 rows where
    none); (C,) the extent each column came from. Only one chunk's (chunk, C) errors are held at once.
    ``src``: the extents' own images; ``device``: where the search runs."""
    side = int(src.shape[-1])
    x = src.float() / 255
    patterns, owner = [], []
    for t, box in enumerate(torch.as_tensor(np.asarray(extents, dtype=np.int64))):
        crop = crop_boxes(x[t:t + 1], box[None])
        h, w = crop.shape[-2:]
        for f in scales:
            hh, ww = round(h * f), round(w * f)
            if f == 1 or min(hh, ww) < 4 or max(hh, ww) > side or (hh, ww) == (h, w):
                continue
            patterns.append(F.interpolate(crop, size=(hh, ww), mode="bilinear", antialias=True,
                                          align_corners=False)[0].clamp(0, 1))
            owner.append(t)
    col = np.full(len(rows), -1, dtype=np.int64)
    box = np.full((len(rows), 4), -1, dtype=np.int64)
    if not patterns:  # every factor leaves the extents' sizes or the image
        return col, box, np.asarray(owner, dtype=np.int64)
    sizes = [tuple(p.shape[-2:]) for p in patterns]
    groups = {size: [c for c, sz in enumerate(sizes) if sz == size] for size in sorted(set(sizes))}
    stacks = {size: torch.stack([patterns[c] for c in cols]).to(device) for size, cols in groups.items()}
    # each chunk of images read once, whatever the number of sizes
    for i in _bar(range(0, len(rows), chunk), progress, f"match: {len(patterns)} rescaled patterns"):
        pool = Pool(images.take(rows[i:i + chunk]).to(device).float() / 255)
        b = len(pool)
        err = torch.full((b, len(patterns)), float("inf"))
        at = torch.full((b, len(patterns), 4), -1, dtype=torch.long)
        for (h, w), cols in groups.items():
            e, a = crop_errors(stacks[(h, w)], pool, ncc, below=rmse)
            err[:, cols] = e.cpu()
            at[:, cols] = torch.cat([a, a + torch.tensor([w, h], device=a.device)], -1).cpu()
        hit, best = _least_hit(err, rmse)
        got = torch.nonzero(hit).flatten()
        col[i + got.numpy()] = best[got].numpy()
        box[i + got.numpy()] = at[got, best[got]].numpy()
    return col, box, np.asarray(owner, dtype=np.int64)


def _least_hit(err: torch.Tensor, rmse: float):
    """Per row of (N, C) errors: whether any column is below ``rmse``, and the column with the least error
    among those (the first on ties; meaningless where none is)."""
    hit = err < rmse
    return hit.any(1), torch.where(hit, err, torch.full_like(err, float("inf"))).argmin(1)


def remove(ctx, loc, verdict) -> Removed:
    """The ``match`` removal (``detect/registry.py``): every image that holds one of the verdict's templates."""
    t, m = verdict.templates, ctx.cfg.match
    key = stage("match").key(ctx.cfg, verdict.key)
    with ctx.clock("match", len(ctx.images)):
        res = ctx.cache.get_or_compute("match", key, lambda: match_removal(
            ctx.images, t.positions, t.boxes, t.ncc, m.rmse, m.copies, m.tol, m.agree, reach=t.reach, scales=m.scales,
            progress=ctx.runner.progress, device=ctx.runner.device))
    return Removed(res["removed"], windows=res["windows"])
