"""PatchSearch (Tejankar et al., CVPR 2023) localisation and search, following its official code
(UCDvision/PatchSearch, ``patch_search_iterative_search.py``; docs/design.md, PatchSearch port).

Its own k-means (L2 on the unit features, random init: faiss ``Clustering``); Grad-CAM (written
here, no grad-cam package) at the backbone's last spatial layer for each image's top cluster under
a cosine head at the centroids (its ``KMeansLinear``); the fixed window with the highest Grad-CAM
sum (``window_w`` = 60 px at 224 by default); the flip test on the ``test_images_size`` images
nearest the centroids, pasted images assigned by L2 on raw features; and the iterative search with
cluster pruning. Images never scored keep score 0, as in its code.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from solo_poisoncam.detect.cam import ClusterActivation, window_sizes
from solo_poisoncam.detect.flip import flip_images_of, pasted_on_flips
from solo_poisoncam.detect.handoff import Context, Localisation
from solo_poisoncam.detect.stages import stage
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
    """PatchSearch's iterative search with cluster pruning, rule for rule as its official code
    (``patch_search_iterative_search.py``, ``--prune_clusters``).

    Each round pops ``samples_per_iteration`` images from a random queue of every candidate cluster
    (an exhausted cluster stays a candidate and gives none) and scores them
    (``score_fn(positions) -> integer counts``). A cluster's score is the highest score of its images,
    never-scored ones counting 0. Clusters are ranked by ``argsort`` of their (int) scores, reversed,
    and the last ``int(remove_per_iteration * candidates)`` are dropped; when that cut is 0 the official
    slice ``[:-0]`` keeps no cluster, so the search ends. It also ends when a round finds no image.
    ``remove_per_iteration = 0`` is the official run without ``--prune_clusters``: every image is scored.

    Returns:
        scores (N,) (0 for never-scored images), scored (N,) bool, rounds (int).
    """
    rng = np.random.default_rng(seed)
    n = len(assignments)
    scores = np.zeros(n, dtype=np.float64)
    scored = np.zeros(n, dtype=bool)
    members = [np.flatnonzero(assignments == k) for k in range(num_clusters)]
    queues = [list(rng.permutation(m)) for m in members]
    candidates = list(range(num_clusters))
    rounds = 0
    while True:
        batch = []
        for k in candidates:
            batch.extend(queues[k][:samples_per_iteration])
            queues[k] = queues[k][samples_per_iteration:]
        if not batch:
            break
        pos = np.array(batch, dtype=np.int64)
        scores[pos], scored[pos] = np.asarray(score_fn(pos), dtype=np.float64), True
        rounds += 1
        if remove_per_iteration <= 0:
            continue
        # an empty cluster (faiss never leaves one; the torch k-means may) scores 0
        ranked = np.array([(k, scores[members[k]].max() if len(members[k]) else 0) for k in candidates]).astype(int)
        ranked = ranked[ranked[:, 1].argsort()][::-1]
        cut = int(remove_per_iteration * len(candidates))
        candidates = ranked[:-cut, 0].tolist() if cut else []
    return scores, scored, rounds


@torch.no_grad()
def l2_flip_counts(model: torch.nn.Module, centroids: torch.Tensor, cand_images: torch.Tensor, windows: torch.Tensor,
                   targets: torch.Tensor, flip_images: torch.Tensor, flip_assign: torch.Tensor, device: torch.device,
                   seed: int = 0, forward_batch: int = 4096) -> torch.Tensor:
    """PatchSearch's flip score (T,) of T candidates, as its official code counts it: each candidate's
    window pasted on every test image, the raw (unnormalised) features of the pasted images assigned
    to the nearest k-means centroid by L2 (its ``index.search``), and the count that land in the
    candidate's k-means cluster ``targets`` minus the test images already assigned there
    (``flip_assign``, their k-means assignments)."""
    model = model.to(device).eval()
    c = centroids.to(device).float()
    half_sq = 0.5 * (c * c).sum(1)
    flip_assign = flip_assign.to(device)
    n_flip = flip_images.shape[0]
    out = torch.zeros(len(windows))
    for part, pasted in pasted_on_flips(cand_images, windows, flip_images, device, seed, forward_batch):
        f = torch.cat([model(pasted[i:i + forward_batch]).float() for i in range(0, len(pasted), forward_batch)])
        new = (f @ c.t() - half_sq).argmax(1).view(len(part), n_flip)  # argmin ||f - c||^2
        target = targets[part].to(device)
        moved = (new == target[:, None]).sum(1) - (flip_assign[None, :] == target[:, None]).sum(1)
        out[part] = moved.float().cpu()
    return out


def localise(ctx: Context) -> Localisation:
    """Grad-CAM windows and searched flip scores of every image (never-scored images keep 0). The
    clustering is PatchSearch's own k-means (the detector's ``kmeans`` options in ``detect/registry.py``);
    ``clusters`` are its assignments, which the search and flip test use."""
    cfg, ps, images, runner, cache, clock = ctx.cfg, ctx.cfg.patchsearch, ctx.images, ctx.runner, ctx.cache, ctx.clock
    act, km, model = ctx.clustering.activation, ctx.clustering.kmeans, ctx.model
    sizes = window_sizes(ctx.side, cfg.window, *cfg.window_range)
    layer = model.feature_layer
    key = stage("gradcam").key(cfg, ctx.clustering.key)
    n = len(images)

    def gradcam_rows():
        def fn(_, x):
            boxes, _, _ = gradcam_windows(act, x.float() / 255, layer, sizes)
            return boxes.float()
        return runner.map_images(fn, images, batch_size=cfg.batch_size, desc="grad-cam")

    with clock("gradcam", n):  # never under autocast (gradcam_maps also turns it off)
        windows = cache.get_or_compute("gradcam", key, gradcam_rows).long()
    clusters = km["assignments"].long()
    key = stage("search").key(cfg, key)
    flip_pos = flip_images_of(km, ps.test_images_size, cfg.seed)

    def search():
        if not runner.is_main:
            return None
        flips = images.take(flip_pos)
        flip_assign = clusters[torch.as_tensor(flip_pos)]

        def score_fn(pos):
            return l2_flip_counts(model, km["centroids"], images.take(pos), windows[pos], clusters[pos], flips,
                                  flip_assign, runner.device, cfg.seed, cfg.forward_batch).numpy()

        s, scored, rounds = iterative_search(score_fn, clusters.numpy(), km["centroids"].shape[0],
                                             ps.samples_per_iteration, ps.remove_per_iteration, cfg.seed)
        return {"scores": s, "scored": scored, "rounds": rounds}

    with clock("search"), runner.autocast(cfg.amp):
        found = runner.broadcast_object(cache.get_or_compute("search", key, search))
    clock.counts["search"] = int(found["scored"].sum()) * len(flip_pos)
    return Localisation(scores=found["scores"], windows=windows.numpy(), clusters=clusters.numpy(),
                        scored=found["scored"], flip_set=flip_pos, key=key)
