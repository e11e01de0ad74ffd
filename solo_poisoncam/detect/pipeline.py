"""Detection as cached, resumable stages: features -> k-means -> cluster head -> localisation and
score (PoisonCAM or PatchSearch) -> poison classifier -> kept / removed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

from solo_poisoncam import __version__
from solo_poisoncam.checks import check
from solo_poisoncam.cluster import kmeans
from solo_poisoncam.cluster.head import load_cluster_head
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import (CamResult, ClusterActivation, cluster_activation_masking, refine_windows,
                                       window_sizes)
from solo_poisoncam.detect.classifier import poison_classifier
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.flip import flip_scores, flip_set
from solo_poisoncam.detect.patchsearch import gradcam_windows, iterative_search
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.features import extract_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.io import hash_file, hash_obj
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.ops.masks import occlusion_masks, rise_masks
from solo_poisoncam.timing import StageClock

# every module whose code computes a cached stage (features, clusters, head, maps, windows, scores,
# classifier): their source is part of every cache key, so a code change never reuses a stale cache
STAGE_SOURCES = ("detect", "cluster", "ops", "engine/features.py", "models/heads.py", "data/indexed.py")


def stage_version() -> str:
    """A hash of this package's version and the source of :data:`STAGE_SOURCES`."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(__version__.encode())
    for entry in STAGE_SOURCES:
        path = root / entry
        for f in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


STAGE_VERSION = stage_version()


@dataclass
class DetectionResult:
    """Per-image outputs (position j <-> dataset index ``indexes[j]``) plus metrics and timings."""

    indexes: np.ndarray
    scores: np.ndarray
    windows: np.ndarray
    clusters: np.ndarray
    removed: np.ndarray
    scored: np.ndarray
    probability: Optional[np.ndarray]
    true_boxes: Optional[np.ndarray]            # (P, 4) true boxes of the poisoned positions (set by eval.detection)
    is_poison: Optional[np.ndarray] = None      # (N,) ground truth, set by eval.detection.score_detection
    head_state: Optional[Dict[str, torch.Tensor]] = None  # the cluster head, for re-masking a few images
    side: int = 0                               # the model's input side: windows are in these pixels
    metrics: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)


def build_masks(cfg: DetectConfig, side: int, seed: int = 0) -> torch.Tensor:
    """The shared mask set (M, 1, S, S) of cluster activation masking."""
    parts = []
    if cfg.masks in ("occlusion", "both"):
        size = max(1, round(cfg.occluder * side))
        stride = max(1, round(cfg.occluder_stride * side))
        parts.append(occlusion_masks(side, side, size, stride)[0])
    if cfg.masks in ("rise", "both"):
        g = torch.Generator().manual_seed(seed)
        parts.append(rise_masks(cfg.num_masks, side, side, grid=cfg.rise_grid, p_keep=cfg.rise_p, generator=g))
    return torch.cat(parts)


def fill_value(cfg: DetectConfig, model: torch.nn.Module):
    if cfg.fill == "mean":
        return model.mean.flatten().detach().cpu().float()  # the data's channel mean, in [0, 1] units
    if cfg.fill == "zero":
        return torch.zeros(3)
    return "blur"


def _checkpoint_id(model) -> str:
    """The checkpoint's content hash (a re-trained file at the same path is another model)."""
    path = getattr(model, "checkpoint", "")
    return hash_file(path) if path and os.path.isfile(path) else str(path)


def run_detection(model, dataset, cfg: DetectConfig, runner: Optional[Runner] = None,
                  cache: Optional[StageCache] = None, progress: bool = True) -> DetectionResult:
    """Detect poisoned images in ``dataset`` with the frozen threat model ``model``.

    Predictions only: the detector never sees ground truth. Score a result against a manifest
    with :func:`solo_poisoncam.eval.detection.score_detection` (docs/design.md, Metrics).
    """
    runner = runner or Runner(progress=progress)
    started = time.perf_counter()
    check(len(dataset) > 0, "the dataset is empty")
    side = model.image_size or min(dataset.image_size(0))
    images = IndexedImages(dataset, size=side)
    n = len(images)
    classes = [c for c in getattr(dataset, "classes", []) if c != "unlabelled"]  # solo's no_labels pseudo-class
    check(cfg.num_clusters is not None or len(classes) > 1,
          "unlabelled data: set num_clusters (K), e.g. about 10 x the number of classes you expect "
          "(PatchSearch uses 1000 on ImageNet-100); the default 10 x classes needs class labels")
    k = cfg.num_clusters or 10 * len(classes)
    check(k <= n, f"K={k} clusters is larger than the number of images N={n}; lower num_clusters")
    clock = StageClock(runner.device, log=runner.info)
    model = model.to(runner.device).eval()
    # the data's content: a poisoned set's fingerprint covers its poisons (PoisonedDataset.fingerprint)
    key: Dict[str, Any] = {"v": STAGE_VERSION, "ckpt": _checkpoint_id(model), "data": dataset.fingerprint(),
                           "side": side}
    cache = cache or StageCache("", enabled=False)
    cache.runner = cache.runner or runner

    with clock("features", n):
        feats = cache.get_or_compute("features", key, lambda: extract_features(model, images, runner, cfg.feature_batch))
    temperature = cfg.head_temperature
    if cfg.head_checkpoint:
        km, head_state, temperature = load_cluster_head(cfg.head_checkpoint, feats)
        key = {**key, "head_checkpoint": hash_file(cfg.head_checkpoint)}
    else:
        km, head_state, key = _clustering_model(feats, k, cfg, runner, cache, key, clock)
    act = cluster_activation(model, head_state, temperature).to(runner.device)
    fill = fill_value(cfg, model)

    if cfg.method == "poisoncam":
        out = _poisoncam(act, images, cfg, fill, side, runner, cache, key, clock, km)
    else:
        out = _patchsearch(act, images, model, cfg, side, runner, cache, key, clock, km)
    scores, windows, clusters, scored = out

    probability, removed = None, np.zeros(n, dtype=bool)
    if cfg.remove == "classifier":
        ckey = {**key, "method": cfg.method, "scores": hash_obj(scores.astype(np.float64), windows.astype(np.int64)),
                "classifier": vars(cfg.classifier)}
        with clock("classifier", n):
            cls = cache.get_or_compute("classifier", ckey,
                                       lambda: poison_classifier(images, scores, windows, runner, cfg.classifier))
        probability, removed = cls["probability"], cls["removed"]

    result = DetectionResult(indexes=images.indexes.copy(), scores=scores, windows=windows, clusters=clusters,
                             removed=removed, scored=scored, probability=probability, true_boxes=None,
                             config={**cfg.to_dict(), "head_temperature": temperature}, head_state=head_state,
                             side=side)
    result.timings = _timings(clock, runner, cache, n, side)
    result.timings["total_s"] = round(time.perf_counter() - started, 3)
    result.metrics["num_removed"] = int(removed.sum())
    result.metrics["num_samples"] = n
    return result


def _clustering_model(feats, k, cfg: DetectConfig, runner, cache, key, clock):
    """Spherical k-means (a cached stage), then the cosine head at the centroids."""
    key = {**key, "k": k, "iters": cfg.kmeans_iters, "seed": cfg.seed, "backend": cfg.kmeans_backend}
    with clock("kmeans"):
        km = cache.get_or_compute("kmeans", key, lambda: _kmeans(feats, k, cfg, runner))
    head_state = CosineClusterHead(km["centroids"], cfg.head_temperature).state_dict()
    return km, head_state, {**key, "head": [cfg.head_temperature]}


def cluster_activation(model, head_state: Dict[str, torch.Tensor], temperature: float) -> ClusterActivation:
    head = CosineClusterHead(head_state["weight"], temperature)
    head.load_state_dict(head_state)
    return ClusterActivation(model, head.eval()).eval()


def _kmeans(feats: torch.Tensor, k: int, cfg: DetectConfig, runner: Runner) -> Dict[str, torch.Tensor]:
    res = kmeans(feats.to(runner.device), k, iters=cfg.kmeans_iters, seed=cfg.seed, backend=cfg.kmeans_backend)
    return {"centroids": res.centroids.cpu(), "assignments": res.assignments.cpu(), "scores": res.scores.cpu(),
            "inertia": res.inertia, "backend": res.backend}


def _flip_images(images: IndexedImages, km, cfg: DetectConfig) -> torch.Tensor:
    pos = flip_set(km["assignments"].numpy(), km["scores"].numpy(), km["centroids"].shape[0], cfg.flip_images, cfg.seed)
    return images.take(pos)


def _poisoncam(act, images, cfg, fill, side, runner, cache, key, clock, km):
    masks = build_masks(cfg, side, cfg.seed)
    key = {**key, "masks": [cfg.masks, cfg.occluder, cfg.occluder_stride, cfg.num_masks, cfg.rise_grid, cfg.rise_p],
           "window": [cfg.window, list(cfg.window_range)]}
    n = len(images)
    with clock("masking", n):
        cam = cache.get_or_compute("cam", key, lambda: cluster_activation_masking(
            act, images, masks, fill, runner, cfg.window, cfg.window_range, cfg.batch_size, cfg.forward_batch,
            clock=clock).__dict__)
    cam = CamResult(**cam)
    clock.counts["masked_forwards"] = clock.counts.get("forward", 0)
    if cfg.refine > 0:
        top = np.sort(np.argsort(-cam.window_drop.numpy(), kind="stable")[: int(np.ceil(cfg.refine * n))])
        rows = torch.as_tensor(top)
        sub = IndexedImages(images.dataset, images.indexes[top], size=side)
        lo, hi = (max(1, round(f * side)) for f in cfg.window_range)
        rkey = {**key, "refine": [cfg.refine, cfg.refine_tau, 2]}  # 2: plateau-centre refinement
        with clock("refine", len(top)):
            windows, drops = cache.get_or_compute("refine", rkey, lambda: refine_windows(
                act, sub, cam.windows[rows], fill, runner, (lo, hi), cfg.refine_tau,
                forward_batch=cfg.forward_batch))
        cam.windows[rows] = windows
        cam.window_drop[rows] = drops
        key = rkey
    drop = cam.window_drop.numpy().astype(np.float64)
    scores = drop.copy() if cfg.score != "flip" else np.zeros(n)
    scored = np.ones(n, dtype=bool)
    if cfg.score in ("flip", "drop+flip") and cfg.flip_top > 0:
        top = np.argsort(-drop, kind="stable")[: min(cfg.flip_top, n)]
        fkey = {**key, "flip": [cfg.flip_images, cfg.flip_top, cfg.score]}

        def compute():
            if not runner.is_main:
                return None
            flips = _flip_images(images, km, cfg)
            cand = images.take(top)
            return flip_scores(act, cand, cam.windows[top], cam.clusters[top], flips, runner.device, cfg.seed,
                               cfg.forward_batch).numpy()

        with clock("flip", len(top) * cfg.flip_images):
            flip = runner.broadcast_object(cache.get_or_compute("flip", fkey, compute))
        if cfg.score == "flip":
            scored = np.zeros(n, dtype=bool)
            scored[top] = True
            scores[top] = 1.0 + flip  # the tested candidates rank above the untested ones
        else:
            scores[top] = drop[top] + np.maximum(flip, 0.0)
    return scores, cam.windows.numpy(), cam.clusters.numpy(), scored


def _patchsearch(act, images, model, cfg, side, runner, cache, key, clock, km):
    sizes = window_sizes(side, cfg.window, *cfg.window_range)
    layer = model.feature_layer
    key = {**key, "window": [cfg.window, list(cfg.window_range)]}
    n = len(images)

    def gradcam_rows():
        def fn(_, x):
            boxes, clusters, _ = gradcam_windows(act, x.float() / 255, layer, sizes)
            return torch.cat([clusters[:, None].float(), boxes.float()], 1)
        return runner.map_images(fn, images, batch_size=cfg.batch_size, desc="grad-cam")

    with clock("gradcam", n):
        rows = cache.get_or_compute("gradcam", key, gradcam_rows)
    clusters, windows = rows[:, 0].long(), rows[:, 1:5].long()
    skey = {**key, "search": [cfg.flip_images, cfg.samples_per_iteration, cfg.remove_per_iteration]}

    def search():
        if not runner.is_main:
            return None
        flips = _flip_images(images, km, cfg)

        def score_fn(pos):
            cand = images.take(pos)
            return flip_scores(act, cand, windows[pos], clusters[pos], flips, runner.device, cfg.seed,
                               cfg.forward_batch, normalise=False).numpy()

        s, scored, rounds = iterative_search(score_fn, clusters.numpy(), km["centroids"].shape[0],
                                             cfg.samples_per_iteration, cfg.remove_per_iteration, cfg.seed)
        return {"scores": s, "scored": scored, "rounds": rounds}

    with clock("search"):
        found = runner.broadcast_object(cache.get_or_compute("search", skey, search))
    clock.counts["search"] = int(found["scored"].sum()) * cfg.flip_images
    return found["scores"], windows.numpy(), clusters.numpy(), found["scored"]


def _timings(clock: StageClock, runner: Runner, cache: StageCache, n: int, side: int) -> Dict[str, Any]:
    t: Dict[str, Any] = {f"{k}_s": round(v, 3) for k, v in clock.seconds.items()}
    t["device"] = str(runner.device) + (f" ({torch.cuda.get_device_name(runner.device)})" if runner.device.type == "cuda" else "")
    t["world_size"] = runner.world_size
    t["images"] = n
    t["image_side"] = side
    t["cache_hits"] = dict(cache.hits)
    # what each stage cost when it was computed, also for stages this run read from the cache
    t["stage_compute_s"] = dict(cache.compute_seconds)
    if not cache.hits.get("features"):
        t["features_images_per_s"] = clock.rate("features")
    if "forward" in clock.seconds:
        t["masked_forwards"] = clock.counts.get("forward", 0)
        t["masked_forwards_per_s"] = clock.rate("forward")
        t["masking_overhead"] = round(clock.seconds.get("mask", 0.0) / clock.seconds["forward"], 4)
    t["solo_poisoncam_version"] = __version__
    return t


