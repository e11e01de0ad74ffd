"""Is there a trigger at all? The statistics of PoisonCAM's label-free verdict: repetition of the
candidates' patterns in other candidates' images (by window, core, part, and copies at other places), and
whether the model learned them (coherence, in-place flip rate), each beside a null of random windows.
The rule that decides from them is written once, in docs/design.md, Verdict (``detect/decision.py``
applies it). No ground truth and no trigger: only the model, the images and the candidates.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from solo_poisoncam.checks import check
from solo_poisoncam.detect.flip import flip_scores, pasted_on_flips
from solo_poisoncam.detect.handoff import VerdictStatistics
from solo_poisoncam.detect.window import crop_boxes


def null_windows(drop: np.ndarray, cand_windows: np.ndarray, count: int, side: int, seed: int = 0):
    """Positions (R,) of source images and boxes (R, 4) of random place, with sides drawn from the
    candidates' window sides. The sources: random from the lower half by ``drop``; where the cluster
    screen left at least half the images unmasked (NaN ``drop``), from those (the clusters it ranked
    lowest: their drops were never measured, and a cluster's sampled drop is no image's own)."""
    check(len(cand_windows) > 0, "the null needs at least one candidate window")
    rng = np.random.default_rng(seed + 7919)  # not the flip test's own stream
    unmasked = np.flatnonzero(np.isnan(drop))
    low = unmasked if len(unmasked) and len(unmasked) >= len(drop) // 2 else \
        np.argsort(drop, kind="stable")[: max(1, len(drop) // 2)]  # NaN sorts last
    src = rng.choice(low, size=count, replace=len(low) < count)
    sides = (cand_windows[:, 2:] - cand_windows[:, :2])[rng.integers(0, len(cand_windows), count)]
    x0 = rng.integers(0, side - sides[:, 0] + 1)
    y0 = rng.integers(0, side - sides[:, 1] + 1)
    boxes = np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], 1).astype(np.int64)
    return src.astype(np.int64), boxes


@torch.no_grad()
def pattern_errors(src_images: torch.Tensor, boxes: torch.Tensor, pool: torch.Tensor, ncc: float = 0.9,
                   chunk: int = 64, where: bool = False, below: Optional[float] = None, device=None):
    """(P, T) float: the smallest root-mean-square pixel difference (in [0, 1] units) between window t
    and pool image p over the positions where their normalised cross-correlation exceeds ``ncc``
    (inf where there is none). Flat image regions and windows with a flat quadrant (pixel std < 1/64)
    match nothing (inf): a window that is mostly background (an object's corner on black) matches
    every image with that background. A pattern *matches* where this error is below an RMSE bound (0.1
    for repetition and match removal): a pasted trigger is pixel-identical (up to resampling), while a
    simple structure (an edge, a gradient) correlates with many images but at other intensities.

    Args:
        src_images: uint8 (T, 3, S, S) the windows are cut from; boxes (T, 4) long.
        pool: uint8 (P, 3, S, S), the images searched.
        where: also return (P, T, 2) long, the top-left (x, y) in pool image p of that best position.
        below: only errors below this are wanted: the others may be reported as inf (and their position
            as 0), and the pool images whose :func:`block_bound` reaches it are never searched.
        device: where the search runs (the outputs are on the CPU); None: the inputs' own.
    """
    src, searched = src_images.to(device).float() / 255, Pool(pool.to(device).float() / 255)
    out = torch.full((len(pool), len(boxes)), float("inf"))
    at = torch.zeros(len(pool), len(boxes), 2, dtype=torch.long)
    sizes = boxes[:, 2:] - boxes[:, :2]
    for size in torch.unique(sizes, dim=0):
        group = torch.nonzero((sizes == size).all(1)).flatten()
        for start in range(0, len(group), chunk):
            part = group[start:start + chunk]
            e, a = crop_errors(crop_boxes(src[part], boxes[part]), searched, ncc, below)
            out[:, part], at[:, part] = e.cpu(), a.cpu()
    return (out, at) if where else out


class Pool:
    """Images searched for patterns (P, 3, S, S) in [0, 1], with what the search needs of them whatever the
    patterns (:func:`window_sums` per pattern size, block means per block side) computed once."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self._memo = {}

    def __len__(self):
        return len(self.x)

    def _get(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def sums(self, h: int, w: int):
        return self._get(("sums", h, w), lambda: window_sums(self.x, h, w))

    def means(self, block: int) -> torch.Tensor:
        """The mean of the ``block`` x ``block`` block at every top-left (P, 3, S - block + 1, ...)."""
        return self._get(("means", block), lambda: F.avg_pool2d(self.x, block, stride=1))

    def mean_squares(self, block: int, nh: int, nw: int) -> torch.Tensor:
        """(P, 1, ...): the sum of the squared block means over an nh x nw grid of blocks at every top-left."""
        return self._get(("squares", block, nh, nw), lambda: F.conv2d(
            self.means(block) ** 2, torch.ones(1, 3, nh, nw, device=self.x.device), dilation=block))

    def subset(self, rows: torch.Tensor, h: int, w: int) -> "Pool":
        """The images ``rows``, with their :meth:`sums` for h x w patterns where already computed (what the
        exact search of those patterns reads; nothing else is sliced)."""
        out = Pool(self.x[rows])
        if ("sums", h, w) in self._memo:
            out._memo[("sums", h, w)] = tuple(t[rows] for t in self._memo[("sums", h, w)])
        return out


def window_sums(pool_x: torch.Tensor, h: int, w: int):
    """What :func:`crop_errors` needs of the pool for h x w patterns, whatever they are: the sum of squares
    in each window, the local standard deviation (times sqrt(3hw)) and where it is flat."""
    k = 3 * h * w
    ones = torch.ones(1, 3, h, w, device=pool_x.device)
    s1 = F.conv2d(pool_x, ones)
    s2 = F.conv2d(pool_x ** 2, ones)
    local_sd = (s2 - s1 ** 2 / k).clamp_min(1e-8).sqrt()  # (P, 1, S-h+1, S-w+1), times sqrt(k)
    return s2, local_sd, local_sd < np.sqrt(k) / 64


def bound_block(h: int, w: int) -> int:
    """The block side :func:`block_bound` uses for h x w patterns: the largest power of two with at least
    3 blocks along the shorter side, and 2 from 4 px (a power of two: sizes near each other share the pool's
    block means); 1 (no bound) below 4 px.

    >>> [bound_block(s, s) for s in (3, 4, 5, 6, 11, 12, 24, 32)]
    [1, 2, 2, 2, 2, 4, 8, 8]
    """
    side = min(h, w)
    return 1 if side < 4 else max(2, 1 << max(0, (side // 3).bit_length() - 1))


def block_bound(raw: torch.Tensor, pool: "Pool", block: int) -> torch.Tensor:
    """(P, T): a lower bound on the squared RMSE of each pattern (T, 3, h, w) in [0, 1] at every position in
    each pool image, from ``block`` x ``block`` means: over the pattern's whole blocks, the sum of squared
    differences of a block is at least ``block**2`` times its mean difference squared (Cauchy-Schwarz), and
    the pixels outside whole blocks add nothing negative. It costs about 1 / ``block**2`` of the search.

    >>> x = torch.rand(2, 3, 12, 12); bool(block_bound(x[:1, :, 2:8, 2:8], Pool(x), 3)[0, 0] < 1e-6)
    True
    """
    h, w = raw.shape[-2:]
    nh, nw = h // block, w // block
    side_y, side_x = pool.x.shape[-2] - h + 1, pool.x.shape[-1] - w + 1  # the search's positions
    tb = F.avg_pool2d(raw, block, stride=block)[..., :nh, :nw]
    cross = F.conv2d(pool.means(block), tb, dilation=block)[..., :side_y, :side_x]
    own = pool.mean_squares(block, nh, nw)[..., :side_y, :side_x]
    sq = (own - 2 * cross + tb.pow(2).sum((1, 2, 3))[None, :, None, None]) * (block * block / (3 * h * w))
    return sq.flatten(2).min(2).values


@torch.no_grad()
def crop_errors(raw: torch.Tensor, pool: "Pool", ncc: float = 0.9, below: Optional[float] = None):
    """:func:`pattern_errors` of T patterns of one size (T, 3, h, w) in [0, 1] in a :class:`Pool`: ((P, T) RMSE
    of the best position, inf = none; (P, T, 2) long top-left (x, y) of that position). ``below``: only
    errors below it are wanted (:func:`pattern_errors`): the pool images whose :func:`block_bound` reaches
    it for every pattern are not searched (inf)."""
    h, w = raw.shape[-2:]
    block = bound_block(h, w)
    if below is not None and block >= 2:
        # the margin keeps float rounding in the bound's sums from ruling out an error just below ``below``
        keep = torch.nonzero((block_bound(raw, pool, block) < below ** 2 + 1e-5).any(1)).flatten()
        if len(keep) < len(pool):
            err = torch.full((len(pool), len(raw)), float("inf"), device=pool.x.device)
            at = torch.zeros(len(pool), len(raw), 2, dtype=torch.long, device=pool.x.device)
            if len(keep):
                err[keep], at[keep] = crop_errors(raw, pool.subset(keep, h, w), ncc)
            return err, at
    k = 3 * h * w
    pool_x = pool.x
    s2, local_sd, flat = pool.sums(h, w)
    t = raw - raw.mean((1, 2, 3), keepdim=True)
    norm = t.flatten(1).norm(dim=1)
    corr = F.conv2d(pool_x, t) / (local_sd * norm.clamp_min(1e-6)[None, :, None, None])
    sq = (s2 - 2 * F.conv2d(pool_x, raw) + raw.pow(2).sum((1, 2, 3))[None, :, None, None]) / k
    sq = torch.where((corr > ncc) & ~flat, sq.clamp_min(0), torch.full_like(sq, float("inf")))
    best, idx = sq.flatten(2).min(2)
    err = best.sqrt()
    err[:, _partly_flat(raw)] = float("inf")
    return err, torch.stack([idx % sq.shape[-1], idx // sq.shape[-1]], -1)


def _partly_flat(x: torch.Tensor) -> torch.Tensor:
    """(T,) bool: a quadrant of window (T, 3, h, w) has pixel std < 1/64."""
    h, w = x.shape[-2:]
    hh, ww = max(1, h // 2), max(1, w // 2)
    quads = [x[..., :hh, :ww], x[..., :hh, ww:], x[..., hh:, :ww], x[..., hh:, ww:]]
    return torch.stack([q.flatten(1).std(1) if q.numel() else torch.zeros(len(x), device=x.device) for q in quads],
                       1).min(1).values < 1 / 64


def repetition(src_images: torch.Tensor, boxes: torch.Tensor, pool: torch.Tensor, ncc: float = 0.9,
               exclude: Optional[np.ndarray] = None, rmse: Sequence[float] = (0.1,), within: Optional[float] = None,
               shifts: bool = False, device=None):
    """Per window (T,) and per ``rmse`` level (L, T): the number of pool images holding its pattern within
    that RMSE, not counting row ``exclude[t]`` of the pool (the window's own image; -1 = none). One
    level gives (T,). With ``within``, also (P, T) bool: pool image p holds window t's pattern within it.
    With ``shifts``, also (P, T) float32: how far that copy (within the first ``rmse``) sits from the
    window's own place, as a share of its side (the larger of the x and y offsets; NaN where p holds none).
    ``device``: where the search runs (:func:`pattern_errors`)."""
    wanted = max(list(rmse) + ([within] if within is not None else []))  # no count looks at a larger error
    err, at = pattern_errors(src_images, boxes, pool, ncc, where=True, below=wanted, device=device)
    if exclude is not None:
        own = torch.as_tensor(exclude)
        cols = torch.nonzero(own >= 0).flatten()
        err[own[cols], cols] = float("inf")
    counts = np.stack([(err < r).sum(0).numpy() for r in rmse])
    out = [counts[0] if len(rmse) == 1 else counts]
    if within is not None:
        out.append((err < within).numpy())
    if shifts:
        side = (boxes[:, 2:] - boxes[:, :2]).min(1).values.clamp_min(1).float()
        moved = (at - boxes[None, :, :2]).abs().max(-1).values.float() / side[None]
        out.append(torch.where(err < rmse[0], moved, torch.full_like(moved, float("nan"))).numpy().astype(np.float32))
    return out[0] if len(out) == 1 else tuple(out)


@torch.no_grad()
def coherence(embed, src_images: torch.Tensor, boxes: torch.Tensor, flip_images: torch.Tensor, device,
              seed: int = 0, forward_batch: int = 4096) -> np.ndarray:
    """Per window (T,): ||mean of the unit features of the flip images with it pasted at random places||^2."""
    n_flip = flip_images.shape[0]
    out = torch.zeros(len(boxes))
    for part, pasted in pasted_on_flips(src_images, boxes, flip_images, device, seed, forward_batch):
        f = torch.cat([embed(pasted[i:i + forward_batch]).float().cpu() for i in range(0, len(pasted), forward_batch)])
        out[part] = f.view(len(part), n_flip, -1).mean(1).pow(2).sum(-1)
    return out.numpy()


def core_boxes(boxes: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """(T, 4) long: the central ``share`` of each box's side (at least 2 px), centred in it.

    >>> core_boxes(torch.tensor([[5, 8, 20, 23]])).tolist()
    [[8, 11, 16, 19]]
    """
    side = boxes[:, 2:] - boxes[:, :2]
    inner = torch.clamp(torch.round(side.float() * share).long(), min=2)
    inner = torch.minimum(inner, side)
    x0 = boxes[:, :2] + (side - inner) // 2
    return torch.cat([x0, x0 + inner], 1)


def part_boxes(boxes: torch.Tensor, share: float = 0.25, least: int = 4) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sub-windows ("parts") of each box: side ``ceil(share * side)`` (at least ``least`` px, at most the
    side), on a grid of stride ``ceil(3/4 * part)`` that ends at the far edge. Returns (Q, 4) long boxes and
    (Q,) long, the box each part came from. A trigger of side >= part + stride - 1 (about 3/8 of the
    window) anywhere in a window holds one part whole: a window twice the trigger's side, the trigger off
    its centre, has a core (:func:`core_boxes`) that takes background along, and one of its parts does not.

    >>> b, owner = part_boxes(torch.tensor([[0, 0, 16, 16]]))
    >>> len(b), b[0].tolist(), b[-1].tolist()
    (25, [0, 0, 4, 4], [12, 12, 16, 16])
    """
    out, owner = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        side = min(x1 - x0, y1 - y0)
        part = min(side, max(least, math.ceil(side * share)))
        step = max(1, -(-3 * part // 4))
        offs = sorted(set(range(0, side - part + 1, step)) | {side - part})
        out += [[x0 + ox, y0 + oy, x0 + ox + part, y0 + oy + part] for oy in offs for ox in offs]
        owner += [i] * len(offs) ** 2
    return torch.tensor(out, dtype=torch.long).view(-1, 4), torch.tensor(owner, dtype=torch.long)


def _best_part(src_images: torch.Tensor, boxes: torch.Tensor, pool: torch.Tensor, ncc: float, exclude: np.ndarray,
               exact: float, pairs: bool = False, device=None):
    """Per box: the largest number of pool images holding an exact copy (RMSE < ``exact``) of one of its
    parts (:func:`part_boxes`), that part's box and (``pairs``) the (P, T) bool of the images holding it."""
    parts, owner = part_boxes(boxes)
    own = owner.numpy()
    out = repetition(src_images[owner], parts, pool, ncc, np.asarray(exclude)[own], (exact,),
                     within=exact if pairs else None, device=device)
    counts, within = (out if pairs else (out, None))
    starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])  # each box's parts are one run, in box order
    # per box: the part with the most copies, the first of them on a tie
    best = np.array([s + int(np.argmax(c)) for s, c in zip(starts, np.split(counts, starts[1:]))], dtype=np.int64)
    res = {"count": counts[best], "box": parts[torch.as_tensor(best)].numpy()}
    if pairs:
        res["pairs"] = within[:, best]
    return res


def verdict_statistics(embed, act, images, clusters: np.ndarray, drop: np.ndarray, cand_pos: np.ndarray,
                       cand_windows: np.ndarray, flip_pos: np.ndarray, count: int, device, ncc: float = 0.9,
                       seed: int = 0, forward_batch: int = 4096, exact: float = 0.02,
                       part_exact: float = 0.001) -> VerdictStatistics:
    """Repetition, coherence (features by ``embed``) and in-place flip rates (``flip`` / ``null_flip``: the
    cluster head's activation ``act``, the images' ``clusters``) of the candidates and of :func:`null_windows`
    (with the null windows themselves, ``null_src`` and ``null_boxes``); repetition is searched in the
    candidates' own images (where the poisons concentrate, if there are any). ``exact`` / ``core_exact``
    (and the null's ``null_exact`` / ``null_core_exact``): how many of those copies match within RMSE
    ``exact``, by the window and by its core (pasted pixels at the same resampling phase; natural content,
    however alike, does not);
    ``part_exact`` / ``null_part_exact`` the same for the best of each window's parts (:func:`part_boxes`)
    within RMSE ``part_exact`` (identical pixels: a few pixels of natural content, clipped at 0 or 255 and
    centred alike, copy within 0.02 too), ``part_box`` (C, 4) that part; ``exact_pairs`` (C, C) bool: candidate image p holds an exact copy of
    candidate t's window, core or best part; ``shift`` (C, C) / ``null_shift`` (C, R): how far window t's copy
    (RMSE < 0.1) in candidate image p sits from the window's own place, a share of its side (NaN: no copy)."""
    side = int(images[0][1].shape[-1])
    src, boxes = null_windows(drop, cand_windows, count, side, seed)
    cand_x, null_x, flips = images.take(cand_pos), images.take(src), images.take(flip_pos)
    cw, nb = torch.as_tensor(cand_windows), torch.as_tensor(boxes)
    row = {int(p): i for i, p in enumerate(cand_pos)}
    own, null_own = np.arange(len(cand_pos)), np.array([row.get(int(p), -1) for p in src])
    rep, pairs, shift = repetition(cand_x, cw, cand_x, ncc, own, (0.1, exact), within=exact, shifts=True,
                                   device=device)
    core_exact, core_pairs = repetition(cand_x, core_boxes(cw), cand_x, ncc, own, (exact,), within=exact,
                                        device=device)
    null_rep, null_shift = repetition(null_x, nb, cand_x, ncc, null_own, (0.1, exact), shifts=True, device=device)
    part = _best_part(cand_x, cw, cand_x, ncc, own, part_exact, pairs=True, device=device)
    c = torch.as_tensor(np.asarray(clusters))
    return VerdictStatistics(
        rep=rep[0], exact=rep[1], core_exact=core_exact, exact_pairs=pairs | core_pairs | part["pairs"],
        part_exact=part["count"], part_box=part["box"],
        null_part_exact=_best_part(null_x, nb, cand_x, ncc, null_own, part_exact, device=device)["count"],
        null_rep=null_rep[0], null_exact=null_rep[1], shift=shift, null_shift=null_shift,
        null_core_exact=repetition(null_x, core_boxes(nb), cand_x, ncc, null_own, (exact,), device=device),
        coh=coherence(embed, cand_x, cw, flips, device, seed, forward_batch),
        null_coh=coherence(embed, null_x, nb, flips, device, seed + 1, forward_batch),
        null_src=src, null_boxes=boxes,
        flip=flip_scores(act, cand_x, cw, c[torch.as_tensor(cand_pos)], flips, device,
                         forward_batch=forward_batch, in_place=True).numpy(),
        null_flip=flip_scores(act, null_x, nb, c[torch.as_tensor(src)], flips, device,
                              forward_batch=forward_batch, in_place=True).numpy())
