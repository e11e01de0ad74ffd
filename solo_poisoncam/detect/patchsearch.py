"""PatchSearch (Tejankar et al., CVPR 2023) localisation and search, in this project's framework.

Grad-CAM on the cluster head (written here, no grad-cam package) at the backbone's last spatial
layer, targeting each image's top cluster; the candidate window on that map; the flip test as
the poison score; and PatchSearch's iterative search that scores a few images per cluster per
round and prunes the lowest-scoring clusters. Images never scored keep score 0, as in its code.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from solo_poisoncam.detect.cam import ClusterActivation, window_sizes
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.flip import flip_images_of, flip_scores
from solo_poisoncam.detect.versions import stage_version
from solo_poisoncam.detect.window import best_window, max_sum_window


def gradcam_maps(act: ClusterActivation, x: torch.Tensor, layer: torch.nn.Module) -> tuple:
    """Grad-CAM maps (B, H, W) of [0, 1] images for their top cluster, and those clusters (B,).

    cam = ReLU(sum_k alpha_k A_k), alpha_k = spatial mean of d logit_c / d A_k, upsampled bilinearly.
    """
    store = {}

    def hook(_, __, out):
        out.requires_grad_(True)
        out.retain_grad()
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    try:  # full precision whatever the caller's autocast: reduced-precision gradients change the maps
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            logits = act.logits(x)
            clusters = logits.argmax(1)
            logits.gather(1, clusters[:, None]).sum().backward()
    finally:
        handle.remove()
    a = store["a"]
    weights = a.grad.mean((2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam, clusters.detach()


def gradcam_windows(act: ClusterActivation, x: torch.Tensor, layer: torch.nn.Module, sizes: Sequence[int]):
    """Candidate windows (B, 4), clusters (B,) and maps (B, H, W) from Grad-CAM."""
    maps, clusters = gradcam_maps(act, x, layer)
    boxes = best_window(maps, sizes)[0] if len(sizes) > 1 else max_sum_window(maps, sizes[0])
    return boxes, clusters, maps


def iterative_search(score_fn: Callable[[np.ndarray], np.ndarray], assignments: np.ndarray, num_clusters: int,
                     samples_per_iteration: int = 2, remove_per_iteration: float = 0.25, seed: int = 0):
    """PatchSearch's search with cluster pruning.

    Each round scores ``samples_per_iteration`` unseen random images of every candidate cluster
    (``score_fn(positions) -> scores``), sets a cluster's score to the best seen in it, and drops
    the ``remove_per_iteration`` share of lowest-scoring candidates; it ends when no unseen image
    is left in the candidates or the cut rounds down to zero clusters (PatchSearch's code).

    Returns:
        scores (N,) (0 for never-scored images), scored (N,) bool, rounds (int).
    """
    rng = np.random.default_rng(seed)
    n = len(assignments)
    scores = np.zeros(n, dtype=np.float64)
    scored = np.zeros(n, dtype=bool)
    unseen = {k: list(rng.permutation(np.flatnonzero(assignments == k))) for k in range(num_clusters)}
    candidates = [k for k in range(num_clusters) if unseen[k]]
    cluster_score = {k: -np.inf for k in candidates}
    rounds = 0
    while candidates:
        batch = []
        for k in candidates:
            take, unseen[k] = unseen[k][:samples_per_iteration], unseen[k][samples_per_iteration:]
            batch.extend(take)
        if not batch:
            break
        pos = np.array(batch, dtype=np.int64)
        s = np.asarray(score_fn(pos), dtype=np.float64)
        scores[pos], scored[pos] = s, True
        for p, v in zip(pos, s):
            k = int(assignments[p])
            cluster_score[k] = max(cluster_score[k], v)
        rounds += 1
        cut = int(len(candidates) * remove_per_iteration)
        if cut == 0:
            break
        candidates = sorted(candidates, key=lambda k: cluster_score[k])[cut:]
        candidates = [k for k in candidates if unseen[k]]
    return scores, scored, rounds


def patchsearch_scores(act, images, model, cfg: DetectConfig, side: int, runner, cache, key: Dict[str, Any], clock,
                       km) -> Dict[str, Any]:
    """Grad-CAM windows and searched flip scores of every image (never-scored images keep 0); the same
    outputs as :func:`solo_poisoncam.detect.poisoncam.poisoncam_scores`."""
    sizes = window_sizes(side, cfg.window, *cfg.window_range)
    layer = model.feature_layer
    key = {**key, "gradcam_v": stage_version("gradcam"), "window": [cfg.window, list(cfg.window_range)]}
    n = len(images)

    def gradcam_rows():
        def fn(_, x):
            boxes, clusters, _ = gradcam_windows(act, x.float() / 255, layer, sizes)
            return torch.cat([clusters[:, None].float(), boxes.float()], 1)
        return runner.map_images(fn, images, batch_size=cfg.batch_size, desc="grad-cam")

    with clock("gradcam", n):  # never under autocast (gradcam_maps also turns it off)
        rows = cache.get_or_compute("gradcam", key, gradcam_rows)
    clusters, windows = rows[:, 0].long(), rows[:, 1:5].long()
    key = {**key, "search_v": stage_version("search"),
           "search": [cfg.flip_images, cfg.samples_per_iteration, cfg.remove_per_iteration]}
    flip_pos = flip_images_of(km, cfg.flip_images, cfg.seed)

    def search():
        if not runner.is_main:
            return None
        flips = images.take(flip_pos)

        def score_fn(pos):
            cand = images.take(pos)
            return flip_scores(act, cand, windows[pos], clusters[pos], flips, runner.device, cfg.seed,
                               cfg.forward_batch, normalise=False).numpy()

        s, scored, rounds = iterative_search(score_fn, clusters.numpy(), km["centroids"].shape[0],
                                             cfg.samples_per_iteration, cfg.remove_per_iteration, cfg.seed)
        return {"scores": s, "scored": scored, "rounds": rounds}

    with clock("search"), runner.autocast(cfg.amp):
        found = runner.broadcast_object(cache.get_or_compute("search", key, search))
    clock.counts["search"] = int(found["scored"].sum()) * cfg.flip_images
    scored = found["scored"]
    return {"scores": found["scores"], "windows": windows.numpy(), "clusters": clusters.numpy(), "scored": scored,
            "candidates": np.zeros(0, dtype=np.int64), "flip_set": flip_pos, "key": key}
