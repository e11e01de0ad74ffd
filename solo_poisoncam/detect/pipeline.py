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
from solo_poisoncam.cluster.head import load_cluster_head
from solo_poisoncam.cluster.kmeans import kmeans_state
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import cluster_activation
from solo_poisoncam.detect.classifier import poison_classifier
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.decision import decide, describe
from solo_poisoncam.detect.patchsearch import KMEANS as PATCHSEARCH_KMEANS
from solo_poisoncam.detect.patchsearch import patchsearch_scores
from solo_poisoncam.detect.poisoncam import fill_value, poisoncam_scores
from solo_poisoncam.detect.removal import feature_probe
from solo_poisoncam.detect.match import match_removal
from solo_poisoncam.detect.verdict import core_boxes, verdict_statistics
from solo_poisoncam.detect.versions import stage_version
from solo_poisoncam.engine.cache import StageCache
from solo_poisoncam.engine.features import extract_features, unit_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.io import hash_file, hash_obj
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.timing import StageClock

STAGE_VERSION = stage_version()  # every stage's code: the run chain's detect folder key


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
    # the data's content (a poisoned set's fingerprint covers its poisons), and where and how it is computed:
    # a CPU or float32 cache is never reused on a GPU or under autocast
    key: Dict[str, Any] = {"v": stage_version("features"), "ckpt": _checkpoint_id(model), "data": dataset.fingerprint(),
                           "side": side, "device": runner.device.type, "amp": cfg.amp}
    cache = cache or StageCache("", enabled=False)
    cache.runner = cache.runner or runner

    def embed(x):  # [0, 1] images -> features, as the features stage computes them
        with torch.no_grad(), runner.autocast(cfg.amp):
            return unit_features(model, x.to(runner.device))

    with clock("features", n), runner.autocast(cfg.amp):
        feats = cache.get_or_compute("features", key, lambda: extract_features(model, images, runner, cfg.feature_batch))
    temperature = cfg.head_temperature
    if cfg.head_checkpoint:
        km, head_state, temperature = load_cluster_head(cfg.head_checkpoint, feats)
        key = {**key, "head_v": stage_version("kmeans", "head"), "head_checkpoint": hash_file(cfg.head_checkpoint)}
    else:
        km, head_state, key = _clustering_model(feats, k, cfg, runner, cache, key, clock)
    act = cluster_activation(model, head_state, temperature).to(runner.device)

    if cfg.method == "poisoncam":
        out = poisoncam_scores(act, images, cfg, fill_value(cfg, model), side, runner, cache, key, clock, km)
    else:
        out = patchsearch_scores(act, images, model, cfg, side, runner, cache, key, clock, km)
    scores, windows, clusters, scored, key = out["scores"], out["windows"], out["clusters"], out["scored"], out["key"]

    verdict = None
    cand = out["candidates"]
    if cfg.method == "poisoncam" and len(cand):
        vkey = {**key, "verdict_v": stage_version("verdict"), "null": cfg.null_windows, "candidates": cfg.flip_top,
                "ncc": cfg.verdict_ncc, "exact": cfg.verdict_exact, "part_exact": cfg.verdict_part_exact}

        def statistics():
            if not runner.is_main:
                return None
            return verdict_statistics(embed, images, out["drop"], cand, windows[cand], out["flip_set"],
                                      cfg.null_windows, runner.device, cfg.verdict_ncc, cfg.seed, cfg.forward_batch,
                                      cfg.verdict_exact, act, clusters, cfg.verdict_part_exact)

        with clock("verdict", (len(cand) + cfg.null_windows) * len(out["flip_set"])):
            stats = runner.broadcast_object(cache.get_or_compute("verdict", vkey, statistics))
        verdict = decide(stats, cfg.verdict_min, cfg.verdict_margin, cfg.verdict_quantile, cfg.verdict_shift)
        verdict_text = describe(verdict)
        runner.info(verdict_text)

    probability, removed, map_windows = None, np.zeros(n, dtype=bool), None
    act_on = cfg.remove != "none" and (verdict is None or verdict["found"] or cfg.force_remove)
    if act_on and cfg.remove == "classifier":
        ckey = {**key, "classifier_v": stage_version("classifier"), "method": cfg.method,
                "scores": hash_obj(scores.astype(np.float64), windows.astype(np.int64)), "classifier": vars(cfg.classifier)}
        with clock("classifier", n):
            cls = cache.get_or_compute("classifier", ckey,
                                       lambda: poison_classifier(images, scores, windows, runner, cfg.classifier))
        probability, removed = cls["probability"], cls["removed"]
    elif act_on and cfg.remove in ("probe", "match"):
        confirmed = cand[verdict["confirmed"]]
        boxes = windows[confirmed]
        by_core = verdict["template_core"][verdict["confirmed"]]  # matched by their core (decide())
        boxes[by_core] = core_boxes(torch.as_tensor(boxes[by_core])).numpy()
        by_part = verdict["template_part"][verdict["confirmed"]]  # ... or by their best part, whose extent
        reach = np.full_like(boxes, -1)                         # may grow over the window that holds it
        part = np.asarray(stats["part_box"])[verdict["confirmed"]][by_part]
        grow = np.tile(part[:, 2:] - part[:, :2], 2) * np.array([-1, -1, 1, 1])
        reach[by_part], boxes[by_part] = boxes[by_part] + grow, part
        if len(confirmed) == 0:  # forced with nothing confirmed: the top candidates stand in, as the classifier's
            confirmed = np.argsort(-scores, kind="stable")[: cfg.classifier.topk]
            boxes = windows[confirmed]
            reach = np.full_like(boxes, -1)
        # at most probe.triggers of them, spread over the ranking
        pick = np.unique(np.linspace(0, len(confirmed) - 1, min(cfg.probe.triggers, len(confirmed))).round().astype(int))
        confirmed, boxes, reach = confirmed[pick], boxes[pick], reach[pick]
        rkey = {**vkey, "removal_v": stage_version("probe"), "remove": cfg.remove,
                "verdict": [cfg.verdict_min, cfg.verdict_margin, cfg.verdict_quantile, cfg.force_remove, cfg.verdict_shift],
                "probe": vars(cfg.probe)}
        with clock(cfg.remove, n):
            if cfg.remove == "probe":  # the verdict's null windows are the probe's pasted negatives
                res = cache.get_or_compute("probe", rkey, lambda: feature_probe(
                    embed, images, feats, scores, images.take(confirmed), torch.as_tensor(boxes),
                    images.take(stats["null_src"]), torch.as_tensor(stats["null_boxes"]), cfg.probe, cfg.seed))
                probability, removed = res["probability"], res["removed"]
            else:  # match: every image that holds a confirmed trigger's pattern, with the trigger's box in it
                res = cache.get_or_compute("match", rkey, lambda: match_removal(
                    images, confirmed, boxes, cfg.verdict_ncc, reach=reach))
                removed = res["removed"]
                map_windows, windows = windows, np.where(removed[:, None], res["windows"], windows)

    config = {**cfg.to_dict(), "head_temperature": temperature}
    result = DetectionResult(indexes=images.indexes.copy(), scores=scores, windows=windows, clusters=clusters,
                             removed=removed, scored=scored, probability=probability, true_boxes=None,
                             config=config, head_state=head_state, side=side, map_windows=map_windows)
    result.timings = _timings(clock, runner, cache, n, side)
    result.timings["total_s"] = round(time.perf_counter() - started, 3)
    result.metrics["num_removed"] = int(removed.sum())
    result.metrics["num_samples"] = n
    if verdict is not None:
        result.metrics["verdict"] = {k: v for k, v in verdict.items() if k not in ("confirmed", "template_core", "template_part")}
        result.metrics["verdict"]["text"] = verdict_text
        result.metrics["verdict"]["removal_skipped"] = bool(cfg.remove != "none" and not act_on)
    return result


def _clustering_model(feats, k, cfg: DetectConfig, runner, cache, key, clock):
    """k-means (a cached stage: spherical for PoisonCAM, PatchSearch's own L2 one for it), then the
    cosine head at the centroids."""
    how = PATCHSEARCH_KMEANS if cfg.method == "patchsearch" else {}
    key = {**key, "kmeans_v": stage_version("kmeans"), "k": k, "iters": cfg.kmeans_iters, "seed": cfg.seed,
           "backend": cfg.kmeans_backend, **({"kmeans": how} if how else {})}
    with clock("kmeans"):
        km = cache.get_or_compute("kmeans", key, lambda: kmeans_state(feats, k, cfg.kmeans_iters, cfg.seed,
                                                                      cfg.kmeans_backend, runner.device, **how))
    head_state = CosineClusterHead(km["centroids"], cfg.head_temperature).state_dict()
    return km, head_state, {**key, "head_v": stage_version("head"), "head": [cfg.head_temperature]}


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


