"""The flip test (PatchSearch, Tejankar et al. 2023, Eq. 3), batched.

A candidate trigger t_i (the window crop of image i, cluster c_i) is pasted at a random place on
every image of a flip set drawn from the clusters; the score is the number of flip images that
then fall in c_i minus the number already there. Candidates of the same window size are
processed together: one paste and a few large forward chunks per size, no per-candidate loop.
"""

from __future__ import annotations

import numpy as np
import torch

from solo_poisoncam.detect.cam import ClusterActivation
from solo_poisoncam.detect.window import crop_boxes, paste_patches


def flip_set(assignments: np.ndarray, scores: np.ndarray, num_clusters: int, size: int, seed: int = 0) -> np.ndarray:
    """Positions of the flip images: the ``size // K`` images closest to each centroid (at least one),
    or, with more clusters than ``size``, the closest image of ``size`` random clusters (PatchSearch)."""
    rng = np.random.default_rng(seed)
    clusters = np.arange(num_clusters)
    per = max(1, size // num_clusters)
    if num_clusters > size:
        clusters = rng.choice(clusters, size=size, replace=False)
    picked = []
    for k in clusters:
        members = np.flatnonzero(assignments == k)
        if len(members):
            picked.append(members[np.argsort(-scores[members], kind="stable")[:per]])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def flip_images_of(km, size: int, seed: int = 0) -> np.ndarray:
    """:func:`flip_set` of a k-means result (``{"assignments", "scores", "centroids"}``)."""
    return flip_set(km["assignments"].numpy(), km["scores"].numpy(), km["centroids"].shape[0], size, seed)


def pasted_on_flips(cand_images: torch.Tensor, windows: torch.Tensor, flip_images: torch.Tensor,
                    device: torch.device, seed: int = 0, forward_batch: int = 4096, in_place: bool = False):
    """Yield ``(rows, pasted)``: for a group of candidates ``rows`` with one window size, every flip image
    with each candidate's window crop pasted at a random place (``in_place``: at the window's own place),
    (len(rows) * F, 3, S, S) in [0, 1] on ``device``, candidate-major. One paste per group, groups sized
    to ``forward_batch``."""
    flips = flip_images.to(device).float() / 255
    n_flip, s = flips.shape[0], flips.shape[-1]
    g = torch.Generator().manual_seed(seed)
    sizes = (windows[:, 2:] - windows[:, :2])
    for size in torch.unique(sizes, dim=0):
        group = torch.nonzero((sizes == size).all(1)).flatten()
        w, h = int(size[0]), int(size[1])
        per_chunk = max(1, forward_batch // n_flip)
        for start in range(0, len(group), per_chunk):
            part = group[start:start + per_chunk]
            x = cand_images[part].to(device).float() / 255
            patches = crop_boxes(x, windows[part].to(device))  # (G, 3, h, w)
            g_n = len(part)
            if in_place:
                pos = windows[part, :2].to(device).repeat_interleave(n_flip, 0)
            else:
                pos = torch.stack([torch.randint(0, s - w + 1, (g_n * n_flip,), generator=g),
                                   torch.randint(0, s - h + 1, (g_n * n_flip,), generator=g)], 1).to(device)
            yield part, paste_patches(flips.repeat(g_n, 1, 1, 1), patches.repeat_interleave(n_flip, 0), pos)


@torch.no_grad()
def flip_scores(act: ClusterActivation, cand_images: torch.Tensor, windows: torch.Tensor, clusters: torch.Tensor,
                flip_images: torch.Tensor, device: torch.device, seed: int = 0, forward_batch: int = 4096,
                normalise: bool = True, in_place: bool = False) -> torch.Tensor:
    """Flip scores (T,) of T candidates.

    Args:
        cand_images: uint8 (T, 3, S, S) images the candidates come from.
        windows: (T, 4) long candidate boxes; clusters: (T,) their clusters.
        flip_images: uint8 (F, 3, S, S).
        normalise: divide by F (a rate in [-1, 1]) instead of returning counts.
        in_place: paste each window at its own place instead of a random one (the verdict's
            in-place flip rate: a trigger always pasted at one place is learned there).
    """
    act = act.to(device).eval()
    n_flip = flip_images.shape[0]
    base_clusters = act.logits(flip_images.to(device).float() / 255).argmax(1)  # (F,)
    out = torch.zeros(len(windows))
    for part, pasted in pasted_on_flips(cand_images, windows, flip_images, device, seed, forward_batch, in_place):
        target = clusters[part].to(device)
        new = torch.cat([act.logits(pasted[i:i + forward_batch]).argmax(1)
                         for i in range(0, len(pasted), forward_batch)]).view(len(part), n_flip)
        moved = (new == target[:, None]).sum(1) - (base_clusters[None, :] == target[:, None]).sum(1)
        out[part] = moved.float().cpu()
    return out / n_flip if normalise else out
