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

    with clock("masking", n), runner.autocast(cfg.amp):
        if fine == n:
            cam = cache.get_or_compute("cam", key, lambda: masking(images, masks))
        else:
            # coarse to fine: masking cost follows the suspicious images, not N. Every image under the
            # coarse occluders; the ones they rank highest again under the full set, whose maps,
            # windows and drops replace theirs (the same window-drop measurement, a finer window)
            coarse_masks = build_masks(pc, side, cfg.seed, stride=pc.coarse_stride)
            cam = dict(cache.get_or_compute("cam-coarse", stage("cam-coarse").key(cfg, ctx.clustering.key),
                                            lambda: masking(images, coarse_masks)))
            top = np.sort(np.argsort(-cam["window_drop"].numpy(), kind="stable")[:fine])
            sub = IndexedImages(images.dataset, images.indexes[top], size=side)
            finer = cache.get_or_compute("cam", key, lambda: masking(sub, masks))
            rows = torch.as_tensor(top)
            for name, value in finer.items():
                cam[name] = cam[name].clone()
                cam[name][rows] = value
    cam = CamResult(**cam)
    clock.counts["masked_forwards"] = clock.counts.get("forward", 0)
    key = stage("refine").key(cfg, key)
    if pc.refine > 0:
        top = np.sort(np.argsort(-cam.window_drop.numpy(), kind="stable")[: int(np.ceil(pc.refine * n))])
        rows = torch.as_tensor(top)
        sub = IndexedImages(images.dataset, images.indexes[top], size=side)
        lo, hi = (max(1, round(f * side)) for f in cfg.window_range)
        with clock("refine", len(top)), runner.autocast(cfg.amp):
            windows, drops = cache.get_or_compute("refine", key, lambda: refine_windows(
                act, sub, cam.windows[rows], fill, runner, (lo, hi), pc.refine_tau,
                forward_batch=cfg.forward_batch))
        cam.windows[rows] = windows
        cam.window_drop[rows] = drops
    drop = cam.window_drop.numpy().astype(np.float64)
    scores = drop.copy() if pc.score != "flip" else np.zeros(n)
    scored = np.ones(n, dtype=bool)
    flip_pos = flip_images_of(km, pc.flip_images, cfg.seed)
    top = np.argsort(-drop, kind="stable")[: min(pc.flip_top, n)]
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
                        flip_set=flip_pos, key=key, drop=drop, candidates=top)
