"""Detection outputs: metrics.json, removed.txt, kept.txt, scores.npy, windows.npy and gallery.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import cluster_activation, maps_for
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.pipeline import DetectionResult
from solo_poisoncam.detect.poisoncam import build_masks, fill_value
from solo_poisoncam.io import save_npy, write_json, write_lines
from solo_poisoncam.viz import PRED_COLOUR, TRUE_COLOUR, heat_overlay, save_png, tile


def metrics_document(result: DetectionResult, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The content of metrics.json: metrics, timings, settings, and the metric definitions used."""
    return {
        "method": result.config.get("method"),
        "metrics": result.metrics,
        "timings": result.timings,
        "config": result.config,
        "definitions": {
            "removed": "images the removal stage (probe, match or classifier) flags (never a deletion of files); "
                       "none when PoisonCAM's verdict is 'no backdoor found' unless force_remove",
            "verdict": "the label-free decision (is there a trigger at all?): found, or 'no backdoor found'; its "
                       "rule: docs/design.md, Verdict",
            "backdoor": "the backdoor check (ground truth: did the attack take?): learned or not learned, with its "
                        "criteria (docs/design.md, Metrics)",
            "precision/recall/f1": "of the removed set against the manifest",
            "auroc/auprc": "of the poison score against the manifest",
            "precision_at_k": "poison share of the k highest scores (ties broken uniformly at random, in expectation)",
            "trigger_detection_accuracy": "share of poisoned images whose candidate window has IoU >= 0.5 with the "
                                          "true trigger box (localisation_all; localisation_topK: poisons among the top K); "
                                          "for images match removal removed, the trigger box it placed "
                                          "(localisation_all_maps: the activation maps' own windows)",
            "hit_rate": "share of poisoned images whose window contains the true box centre",
            "masking_overhead": "time applying masks and building maps / time of the masked forward passes",
        },
        **(extra or {}),
    }


def summary_line(result: DetectionResult, backdoor: Optional[Dict[str, Any]] = None) -> str:
    """One line a person reads after a detection (CLI and the solo-learn hook)."""
    m = result.metrics
    text = f"{result.config['method']}: removed {m['num_removed']}/{m['num_samples']}"
    if m.get("verdict"):
        v = m["verdict"]
        text += f" | {v['text']}" + (" - nothing removed (--force-remove to remove anyway)"
                                     if v.get("removal_skipped") else "")
    if "precision" in m:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        text += (f" | precision {fmt(m.get('precision'))} recall {fmt(m.get('recall'))} "
                 f"AUROC {fmt(m.get('auroc'))} trigger-detection acc {fmt(m.get('trigger_detection_accuracy'))}")
    if backdoor is not None:
        text += f" | backdoor {'learned' if backdoor['learned'] else 'NOT learned (detection numbers are not meaningful)'}"
    return text


def write_detection_outputs(result: DetectionResult, out: Path, images: IndexedImages, model=None,
                            extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write every output file (each atomically); metrics.json last, so its presence marks completeness.

    ``model`` (the threat model) lets the gallery show PoisonCAM's activation maps."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    removed = result.indexes[result.removed]
    kept = result.indexes[~result.removed]
    write_lines(out / "removed.txt", removed.tolist())
    write_lines(out / "kept.txt", kept.tolist())
    save_npy(out / "scores.npy", result.scores.astype(np.float32))
    save_npy(out / "windows.npy", result.windows.astype(np.int32))
    save_npy(out / "indexes.npy", result.indexes.astype(np.int64))
    # an optional output this detection does not make must not survive from an earlier one in the folder
    if result.probability is not None:
        save_npy(out / "probability.npy", result.probability.astype(np.float32))
    else:
        (out / "probability.npy").unlink(missing_ok=True)
    if result.config.get("gallery", 0) > 0:
        save_png(gallery(result, images, model), out / "gallery.png")
    else:
        (out / "gallery.png").unlink(missing_ok=True)
    write_json(out / "metrics.json", metrics_document(result, extra))
    return out / "metrics.json"


def gallery(result: DetectionResult, images: IndexedImages, model=None):
    """The flagged images, in pairs: the image with the true trigger box (green, when known), and the
    activation map overlaid (PoisonCAM) with the window (red). The removed images come first (by score),
    then the highest scores: what the detector acted on, not only what it ranked."""
    cfg = DetectConfig.from_dict(result.config)
    by_score = np.argsort(-result.scores, kind="stable")
    order = np.concatenate([by_score[result.removed[by_score]], by_score[~result.removed[by_score]]])[: cfg.gallery]
    x = images.take(order)
    side = x.shape[-1]
    plain = [x[i].permute(1, 2, 0).numpy() for i in range(len(order))]
    heat = plain
    if model is not None and cfg.method == "poisoncam" and result.head_state is not None:
        device = next(model.parameters()).device
        act = cluster_activation(model, result.head_state, cfg.head_temperature).to(device)
        maps = maps_for(act, x, build_masks(cfg.poisoncam, side, cfg.seed), fill_value(cfg.poisoncam, model), device,
                        cfg.forward_batch)
        heat = [heat_overlay(p, m.numpy(), alpha=0.6) for p, m in zip(plain, maps)]
    true = {}
    if result.true_boxes is not None:
        true = {int(p): b for p, b in zip(np.flatnonzero(result.is_poison), result.true_boxes)}
    pictures, boxes, captions = [], [], []
    for i, j in enumerate(order):
        pictures += [plain[i], heat[i]]
        tb = [(np.round(true[int(j)]).astype(int), TRUE_COLOUR)] if int(j) in true else []
        boxes += [tb, [(result.windows[j], PRED_COLOUR)] if result.windows[j][0] >= 0 else []]  # -1: no window
        tag = "poison" if int(j) in true else ("clean" if result.is_poison is not None else "")
        captions += [f"#{int(result.indexes[j])} {tag}",
                     f"score {result.scores[j]:.2f}" + (" removed" if result.removed[j] else "")]
    return tile(pictures, boxes, scale=max(1, 96 // side), columns=8, captions=captions)
