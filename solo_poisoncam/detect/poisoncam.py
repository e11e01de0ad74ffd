"""PoisonCAM's localisation and score as cached stages: masking -> window refinement -> flip test
(docs/design.md, method steps 3-5); the detector ``poisoncam`` of ``detect/registry.py``."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import CamResult, cluster_activation_masking, refine_windows
from solo_poisoncam.detect.config import PoisonCamConfig
from solo_poisoncam.detect.flip import flip_images_of, flip_scores
from solo_poisoncam.detect.handoff import Context, Localisation
from solo_poisoncam.detect.stages import stage
from solo_poisoncam.ops.masks import occlusion_masks, rise_masks


def build_masks(cfg: PoisonCamConfig, side: int, seed: int = 0, stride: Optional[float] = None) -> torch.Tensor:
    """The shared mask set (M, 1, S, S) of cluster activation masking (occluders of each side in
    ``cfg.occluder`` at ``stride``, a share of the side; default ``cfg.occluder_stride``)."""
    parts = []
    if cfg.masks in ("occlusion", "both"):
        step = max(1, round((stride or cfg.occluder_stride) * side))
        for share in (cfg.occluder if isinstance(cfg.occluder, list) else [cfg.occluder]):
            parts.append(occlusion_masks(side, side, max(1, round(share * side)), step)[0])
    if cfg.masks in ("rise", "both"):
        g = torch.Generator().manual_seed(seed)
        parts.append(rise_masks(cfg.num_masks, side, side, grid=cfg.rise_grid, p_keep=cfg.rise_p, generator=g))
    return torch.cat(parts)


def fill_value(cfg: PoisonCamConfig, model: torch.nn.Module):
    if cfg.fill == "mean":
        return model.mean.flatten().detach().cpu().float()  # the data's channel mean, in [0, 1] units
    if cfg.fill == "zero":
        return torch.zeros(3)
    return "blur"


def fine_count(cfg: PoisonCamConfig, n: int) -> int:
    """How many of ``n`` images are masked under the full mask set. With a coarse pass: the
    ``coarse_top`` share with the highest coarse window drops, at least the flip test's
    ``flip_top`` candidates; ``n`` (one pass) without one, or when that covers every image."""
    if cfg.coarse_stride is None or cfg.masks == "rise" or cfg.coarse_stride <= cfg.occluder_stride:
        return n
    return min(n, max(int(np.ceil(cfg.coarse_top * n)), cfg.flip_top))


def _top(drop: np.ndarray, masked: np.ndarray, count: int, keep_order: bool = False) -> np.ndarray:
    """Positions of the ``count`` masked images of highest ``drop`` (sorted; by rank with ``keep_order``)."""
    rank = np.argsort(-np.where(masked, drop, -np.inf), kind="stable")[: min(count, int(masked.sum()))]
    return rank if keep_order else np.sort(rank)


def screen_cover(cfg: PoisonCamConfig, n: int) -> int:
    """How many of ``n`` images the cluster screen hands on to the coarse pass (at least): ``screen_cover``
    of them and twice the flip test's candidates; ``n`` without a screen (every image)."""
    if not cfg.screen:
        return n
    return min(n, max(int(np.ceil(cfg.screen_cover * n)), 2 * cfg.flip_top))


def screen_sample(clusters: np.ndarray, per_cluster: int, seed: int) -> np.ndarray:
    """Sorted positions of ``per_cluster`` images drawn from each cluster (all of a smaller one), seeded."""
    rng = np.random.default_rng(seed + 104729)  # its own stream
    picks = [rng.permutation(np.flatnonzero(clusters == c))[:per_cluster] for c in np.unique(clusters)]
    return np.sort(np.concatenate(picks))


def cluster_maxima(clusters: np.ndarray, sample: np.ndarray, sample_drop: np.ndarray) -> np.ndarray:
    """(max cluster id + 1,) the largest window drop among each cluster's sampled images (-inf: none sampled)."""
    best = np.full(int(clusters.max()) + 1, -np.inf)
    np.maximum.at(best, clusters[sample], sample_drop)
    return best


def covered(clusters: np.ndarray, best: np.ndarray, cover: int) -> np.ndarray:
    """(N,) bool: the images of the clusters ranked highest by ``best`` (:func:`cluster_maxima`), the fewest
    clusters that hold at least ``cover`` images (ties: the lower cluster id first)."""
    ids = np.unique(clusters)
    order = ids[np.lexsort((ids, -best[ids]))]
    sizes = np.bincount(clusters, minlength=len(best))[order]
    chosen = order[: int(np.searchsorted(np.cumsum(sizes), cover)) + 1]
    return np.isin(clusters, chosen)


def screened(ctx: Context, masking, coarse_key):
    """The cluster screen (``poisoncam.screen``): the coarse pass on a sample of each cluster, then on the
    images of the clusters it ranks highest. Returns the coarse CamResult fields for every image (an image
    left out keeps its cluster's largest sampled drop and no window, -1) and which images were masked."""
    cfg, pc, images, cache = ctx.cfg, ctx.cfg.poisoncam, ctx.images, ctx.cache
    n = len(images)
    head = ctx.clustering.activation.head
    with torch.no_grad():  # each image's cluster and activation, from the features: no forward pass
        logits = head(ctx.features.to(next(head.parameters()).device).float()).cpu()
    clusters = logits.argmax(1)
    base = torch.softmax(logits, 1).gather(1, clusters[:, None])[:, 0]
    labels = clusters.numpy()
    sample = screen_sample(labels, pc.screen, cfg.seed)
    key = stage("screen").key(cfg, ctx.clustering.key)

    first = cache.get_or_compute("screen", key, lambda: masking(images.subset(sample)))
    best = cluster_maxima(labels, sample, first["window_drop"].numpy())
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True
    masked = covered(labels, best, screen_cover(pc, n)) | in_sample
    rest = np.flatnonzero(masked & ~in_sample)
    second = cache.get_or_compute("cam-coarse", coarse_key, lambda: masking(images.subset(rest)))
    cam = {"clusters": clusters, "activation": base, "windows": torch.full((n, 4), -1, dtype=torch.long),
           "window_drop": torch.as_tensor(best[labels], dtype=first["window_drop"].dtype),
           "map_peak": torch.zeros(n, dtype=first["map_peak"].dtype)}
    for pos, part in ((sample, first), (rest, second)):
        rows = torch.as_tensor(pos)
        for name, value in part.items():
            cam[name][rows] = value.to(cam[name].dtype)
    return cam, masked


def localise(ctx: Context) -> Localisation:
    """Windows and scores of every image by cluster activation masking; ``drop`` the window drops and
    ``candidates`` the ``flip_top`` highest by drop (the verdict's)."""
    cfg, pc, images, side, runner, cache, clock = ctx.cfg, ctx.cfg.poisoncam, ctx.images, ctx.side, ctx.runner, \
        ctx.cache, ctx.clock
    act, km = ctx.clustering.activation, ctx.clustering.kmeans
    fill = fill_value(pc, ctx.model)
    masks = build_masks(pc, side, cfg.seed)
    n = len(images)
    fine = fine_count(pc, n)
    key = stage("cam").key(cfg, ctx.clustering.key)

    def masking(subset: IndexedImages, mask_set: torch.Tensor) -> Dict[str, torch.Tensor]:
        return cluster_activation_masking(act, subset, mask_set, fill, runner, cfg.window, cfg.window_range,
                                          cfg.batch_size, cfg.forward_batch, clock=clock).__dict__

    masked = np.ones(n, dtype=bool)  # images masked (the others keep their cluster's screened drop)
    with clock("masking", n), runner.autocast(cfg.amp):
        if fine == n:
            cam = cache.get_or_compute("cam", key, lambda: masking(images, masks))
        else:
            # coarse to fine: masking cost follows the suspicious images, not N. Every image (or, with the
            # cluster screen, the images of the clusters it ranks highest) under the coarse occluders; the
            # ones they rank highest again under the full set, whose maps, windows and drops replace theirs
            # (the same window-drop measurement, a finer window)
            coarse_masks = build_masks(pc, side, cfg.seed, stride=pc.coarse_stride)
            coarse_key = stage("cam-coarse").key(cfg, ctx.clustering.key)
            if screen_cover(pc, n) < n:
                cam, masked = screened(ctx, lambda subset: masking(subset, coarse_masks), coarse_key)
            else:
                cam = dict(cache.get_or_compute("cam-coarse", coarse_key, lambda: masking(images, coarse_masks)))
            top = _top(cam["window_drop"].numpy(), masked, fine_count(pc, int(masked.sum())))
            sub = images.subset(top)
            finer = cache.get_or_compute("cam", key, lambda: masking(sub, masks))
            rows = torch.as_tensor(top)
            for name, value in finer.items():
                cam[name] = cam[name].clone()
                cam[name][rows] = value
    cam = CamResult(**cam)
    clock.counts["masked_forwards"] = clock.counts.get("forward", 0)
    clock.counts["masked_images"] = int(masked.sum())
    key = stage("refine").key(cfg, key)
    if pc.refine > 0:
        count = int(np.ceil(pc.refine * n))
        if not masked.all():  # a share of the masked images, and every candidate of the flip test
            count = max(int(np.ceil(pc.refine * masked.sum())), pc.flip_top)
        top = _top(cam.window_drop.numpy(), masked, count)
        rows = torch.as_tensor(top)
        sub = images.subset(top)
        lo, hi = (max(1, round(f * side)) for f in cfg.window_range)
        with clock("refine", len(top)), runner.autocast(cfg.amp):
            windows, drops = cache.get_or_compute("refine", key, lambda: refine_windows(
                act, sub, cam.windows[rows], fill, runner, (lo, hi), pc.refine_tau,
                forward_batch=cfg.forward_batch))
        cam.windows[rows] = windows
        cam.window_drop[rows] = drops
    drop = cam.window_drop.numpy().astype(np.float64)
    scores = drop.copy() if pc.score != "flip" else np.zeros(n)
    scored = masked.copy()
    flip_pos = flip_images_of(km, pc.flip_images, cfg.seed)
    top = _top(drop, masked, min(pc.flip_top, n), keep_order=True)
    key = stage("flip").key(cfg, key)
    if pc.score in ("flip", "drop+flip") and pc.flip_top > 0:
        def compute():
            if not runner.is_main:
                return None
            cand = images.take(top)
            return flip_scores(act, cand, cam.windows[top], cam.clusters[top], images.take(flip_pos), runner.device,
                               cfg.seed, cfg.forward_batch).numpy()

        with clock("flip", len(top) * pc.flip_images), runner.autocast(cfg.amp):
            flip = runner.broadcast_object(cache.get_or_compute("flip", key, compute))
        if pc.score == "flip":
            scored = np.zeros(n, dtype=bool)
            scored[top] = True
            scores[top] = 1.0 + flip  # the tested candidates rank above the untested ones
        else:
            scores[top] = drop[top] + np.maximum(flip, 0.0)
    return Localisation(scores=scores, windows=cam.windows.numpy(), clusters=cam.clusters.numpy(), scored=scored,
                        flip_set=flip_pos, key=key, drop=np.where(masked, drop, np.nan), candidates=top)
