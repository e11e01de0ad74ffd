"""Detection scored against ground truth: the detector returns predictions only (detect/), and
this module compares them with a poison manifest (docs/design.md, Metrics)."""

from __future__ import annotations

from typing import Dict

import numpy as np

from solo_poisoncam.checks import check
from solo_poisoncam.eval.metrics import detection_metrics, localisation_metrics
from solo_poisoncam.poison.manifest import PoisonManifest


def true_boxes_in_input(manifest: PoisonManifest, side: int) -> Dict[int, np.ndarray]:
    """Manifest boxes mapped to the S x S model input: to the pixels the manifest's dataset serves
    (a written folder's file boxes through its resize and centre crop), then resized to S x S."""
    out = {}
    boxes, sizes = manifest.served_boxes(manifest.dataset.get("size"))
    for i, b, (w, h) in zip(manifest.indexes, boxes, sizes):
        sx, sy = side / w, side / h
        out[int(i)] = np.array([b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
    return out


def score_detection(result, manifest: PoisonManifest):
    """Add detection and localisation metrics to ``result.metrics`` and the ground truth the gallery
    draws (``result.is_poison``, ``result.true_boxes``); returns ``result``."""
    check(len(result.indexes) == 0 or int(result.indexes.max()) < manifest.num_samples,
          f"the detection covers index {int(result.indexes.max())}, the manifest {manifest.num_samples} images")
    side = result.side
    is_poison = manifest.is_poison()[result.indexes]
    m = detection_metrics(is_poison, result.removed, result.scores)
    boxes = true_boxes_in_input(manifest, side)
    pos = np.flatnonzero(is_poison)
    true = np.array([boxes[int(result.indexes[j])] for j in pos]).reshape(-1, 4)
    result.true_boxes = true
    result.is_poison = is_poison
    m["localisation_all"] = localisation_metrics(result.windows[pos], true)
    order = np.argsort(-result.scores, kind="stable")
    for k in (20, 100):
        top = order[:k]
        top_pos = top[is_poison[top]]
        tb = np.array([boxes[int(result.indexes[j])] for j in top_pos]).reshape(-1, 4)
        m[f"localisation_top{k}"] = localisation_metrics(result.windows[top_pos], tb)
    m["trigger_detection_accuracy"] = m["localisation_all"]["trigger_detection_accuracy"]
    if getattr(result, "map_windows", None) is not None:  # the maps' own windows, before match placed the trigger
        m["localisation_all_maps"] = localisation_metrics(result.map_windows[pos], true)
    m["scored_poisons"] = int((result.scored & is_poison).sum())
    result.metrics.update(m)
    return result
