"""Detection as cached, resumable stages: features -> k-means -> cluster head -> the detector's
localisation and score (``detect/registry.py``) -> its verdict -> the removal -> kept / removed.
Each stage's cache key is derived from its declaration (``detect/stages.py``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional

import numpy as np
import torch

from solo_poisoncam import __version__
from solo_poisoncam.checks import check
from solo_poisoncam.cluster.head import load_cluster_head
from solo_poisoncam.cluster.kmeans import kmeans_state
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import cluster_activation
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.handoff import Clustering, Context
from solo_poisoncam.detect.registry import DETECTORS, REMOVALS
from solo_poisoncam.detect.stages import code_version, stage
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.features import extract_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.io import hash_file
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.timing import StageClock

STAGE_VERSION = code_version()  # every stage's code: the run chain's detect folder key


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
    map_windows: Optional[np.ndarray] = None    # the activation maps' windows where ``windows`` holds match boxes
    metrics: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, Any] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)


def _checkpoint_id(model) -> str:
    """The checkpoint's content hash (a re-trained file at the same path is another model)."""
    path = getattr(model, "checkpoint", "")
    return hash_file(path) if path and os.path.isfile(path) else str(path)


def run_detection(model, dataset, cfg: DetectConfig, runner: Optional[Runner] = None,
                  cache: Optional[StageCache] = None, progress: bool = True) -> DetectionResult:
    """Detect poisoned images in ``dataset`` with the frozen threat model ``model``: features -> clustering
    model -> the detector (``cfg.method``) -> its verdict, where it has one -> the removal (``cfg.remove``).

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
    detector = DETECTORS.get(cfg.method)
    # forward_batch counts 32 px images: a forward holds forward_batch x (32 / side)^2 images, the same memory
    # at any side (at 224 px, 4096 -> 83 images)
    cfg = replace(cfg, forward_batch=max(1, cfg.forward_batch * 32 * 32 // (side * side)))
    served = [int(v) for v in getattr(dataset, "base", dataset).image_size(0)]  # a poisoned set: its base's size
    if model.image_size and served != [side, side]:  # said and recorded: the model sees the data resized
        runner.info(f"warning: the data is served at {served[0]}x{served[1]} px and the threat model was trained "
                    f"at {side} px: every image is resized to {side} px for detection (recorded in metrics.json)")
    with runner.tagged(cfg.method):  # stage lines name the detector that prints them
        clock = StageClock(runner.device, log=runner.info)
        model = model.to(runner.device).eval()
        cache = cache or StageCache("", enabled=False)
        cache.runner = cache.runner or runner
        # the data's content (a poisoned set's fingerprint covers its poisons), and where and how it is computed:
        # a CPU or float32 cache is never reused on a GPU or under autocast
        key = stage("features").key(cfg, {}, ckpt=_checkpoint_id(model), data=dataset.fingerprint(), side=side,
                                    device=runner.device.type)
        with clock("features", n), runner.autocast(cfg.amp):
            feats = cache.get_or_compute("features", key,
                                         lambda: extract_features(model, images, runner, cfg.feature_batch))
        clustering = _clustering_model(feats, k, cfg, detector, runner, cache, key, clock, model)
        ctx = Context(model, images, cfg, side, runner, cache, clock, feats, clustering)
        loc = detector.localise(ctx)
        verdict = detector.verdict(ctx, loc)
        if verdict is not None:
            runner.info(verdict.text)
        act_on = cfg.remove != "none" and (verdict is None or verdict.found or cfg.force_remove)
        out = REMOVALS.get(cfg.remove if act_on else "none").remove(ctx, loc, verdict)
    windows, map_windows = loc.windows, None
    if out.windows is not None:  # the trigger boxes removal placed, in the images it removed
        map_windows, windows = windows, np.where(out.removed[:, None], out.windows, windows)

    config = {**cfg.to_dict(), "head_temperature": clustering.temperature}
    result = DetectionResult(indexes=images.indexes.copy(), scores=loc.scores, windows=windows, clusters=loc.clusters,
                             removed=out.removed, scored=loc.scored, probability=out.probability, true_boxes=None,
                             config=config, head_state=clustering.head_state, side=side, map_windows=map_windows)
    result.timings = _timings(clock, runner, cache, n, side)
    result.timings["total_s"] = round(time.perf_counter() - started, 3)
    result.metrics["num_removed"] = int(out.removed.sum())
    result.metrics["num_samples"] = n
    result.metrics["input"] = {"served_size": served, "model_side": side, "resized": served != [side, side]}
    if verdict is not None:
        result.metrics["verdict"] = {**verdict.summary, "text": verdict.text,
                                     "removal_skipped": bool(cfg.remove != "none" and not act_on)}
    return result


def _clustering_model(feats, k, cfg: DetectConfig, detector, runner, cache, key, clock, model) -> Clustering:
    """k-means (a cached stage: spherical for PoisonCAM, PatchSearch's own L2 one for it) and the cosine
    head at the centroids, or a solo-learn ``cluster_head`` checkpoint's clusters and head."""
    if cfg.head_checkpoint:
        km, head_state, temperature = load_cluster_head(cfg.head_checkpoint, feats)
        key = stage("head").key(cfg, key, checkpoint=hash_file(cfg.head_checkpoint))
    else:
        how = detector.kmeans
        key = stage("kmeans").key(cfg, key, k=k, **({"kmeans": how} if how else {}))
        with clock("kmeans"):
            km = cache.get_or_compute("kmeans", key, lambda: kmeans_state(feats, k, cfg.kmeans_iters, cfg.seed,
                                                                          cfg.kmeans_backend, runner.device, **how))
        temperature = cfg.head_temperature
        head_state = CosineClusterHead(km["centroids"], temperature).state_dict()
        key = stage("head").key(cfg, key)
    act = cluster_activation(model, head_state, temperature).to(runner.device)
    return Clustering(km, head_state, temperature, act, key)


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
    if "masked_images" in clock.counts:  # images under the coarse occluders (all but those the screen left out)
        t["masked_images"] = clock.counts["masked_images"]
    if "refine" in clock.counts:  # windows refined, cam.REFINE_FORWARDS masked forwards each
        t["refined_windows"] = clock.counts["refine"]
    # per stage computed in this run (a cached stage's is the loading's): host resident memory, and GPU memory
    t["peak_rss_mb"] = dict(clock.peak_rss_mb)
    if clock.peak_cuda_mb:
        t["peak_cuda_mb"] = dict(clock.peak_cuda_mb)
    t["solo_poisoncam_version"] = __version__
    return t


