"""Detection, localisation and attack metrics (exact definitions: docs/design.md, Metrics).

Every function accepts numpy arrays or torch tensors (CPU or CUDA) and returns plain Python
numbers, ``None`` where a value is undefined (JSON null), so results go straight into a report.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

from solo_poisoncam.checks import check


def _np(x: Any) -> np.ndarray:
    """A numpy view of ``x`` (torch tensors are detached and brought to the host)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scores_labels(scores: Any, labels: Any):
    s = _np(scores).astype(np.float64).reshape(-1)
    y = _np(labels).reshape(-1)
    check(len(s) == len(y), f"scores and labels differ in length ({len(s)} vs {len(y)})")
    check(len(s) > 0, "scores are empty")
    check(not np.isnan(s).any(), "scores contain NaN")
    check(np.isin(y, [0, 1]).all(), "labels must be binary (0/1 or bool)")
    return s, y.astype(bool)


def _grouped(s: np.ndarray, y: np.ndarray):
    """Positives and negatives per distinct score, scores in descending order: (pos, neg), each (G,)."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = np.add.reduceat(y.astype(np.int64), starts)
    size = np.diff(np.r_[starts, len(s)])
    return pos, size - pos


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` (N,) for binary ``labels`` (N,), higher = positive.

    Exact Mann-Whitney U / (P * N): each (positive, negative) pair counts 1 when the positive
    scores higher and 0.5 when tied. Raises :class:`PoisonCamError` if labels are all one class.
    """
    s, y = _scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    check(n_pos > 0 and n_neg > 0, "AUROC is undefined when labels are all one class")
    pos, neg = _grouped(s, y)
    neg_below = n_neg - np.cumsum(neg)  # negatives with a strictly lower score than the group
    twice_u = int(np.sum(pos * (2 * neg_below + neg)))  # integer-exact 2U
    return twice_u / (2.0 * n_pos * n_neg)


def average_precision(scores: Any, labels: Any) -> float:
    """Area under the precision-recall curve, as ``sklearn.metrics.average_precision_score``.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in descending order (tied
    scores enter together). ``scores``, ``labels``: (N,). Raises if there are no positives.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    check(n_pos > 0, "average precision is undefined without positives")
    pos, neg = _grouped(s, y)
    tp = np.cumsum(pos)
    precision = tp / (tp + np.cumsum(neg))
    return float(np.sum(pos * precision) / n_pos)


def precision_at_k(scores: Any, labels: Any, k: int) -> float:
    """Expected precision of the top-``k`` scores (N,) under uniform random tie-breaking.

    Positives scoring strictly above the k-th highest score count fully; the group tied with it
    contributes (slots left) x (positive fraction of the group). ``k`` > N is clipped to N.
    """
    s, y = _scores_labels(scores, labels)
    check(int(k) >= 1, f"k must be >= 1, got {k}")
    k = min(int(k), len(s))
    kth = np.sort(s)[::-1][k - 1]
    above, tied = s > kth, s == kth
    slots = k - int(above.sum())
    expected = int(y[above].sum()) + slots * int(y[tied].sum()) / int(tied.sum())
    return float(expected / k)


def _removed_mask(removed: Any, n: int) -> np.ndarray:
    r = _np(removed).reshape(-1)
    if r.dtype == bool:
        check(len(r) == n, f"removed mask has length {len(r)}, expected {n}")
        return r.copy()
    if r.size == 0:
        return np.zeros(n, dtype=bool)
    check(np.issubdtype(r.dtype, np.integer), f"removed must be a bool mask or integer indexes, got {r.dtype}")
    check(r.min() >= 0 and r.max() < n, f"removed indexes must lie in [0, {n})")
    mask = np.zeros(n, dtype=bool)
    mask[r] = True
    return mask


def detection_metrics(is_poison: Any, removed: Any, scores: Any = None,
                      ks: Iterable[int] = (5, 10, 20, 50, 100)) -> Dict[str, Any]:
    """Detection quality of a removed set against the ground truth.

    Args:
        is_poison: (N,) bool ground truth.
        removed: (N,) bool mask or (R,) int indexes of the removed images (duplicates ignored).
        scores: optional (N,) poison scores (higher = more suspicious) for ``auroc``, ``auprc``
            and ``precision_at_{k}`` for each k in ``ks``.

    Precision of an empty removed set is 0.0. On a clean run (no poisons) ``recall``, ``f1``,
    ``auroc`` and ``auprc`` are None; ``false_removal_rate`` (clean removed / clean) is always given
    (None only when every image is a poison).
    """
    y = _np(is_poison).reshape(-1)
    check(np.isin(y, [0, 1]).all(), "is_poison must be a bool mask")
    y = y.astype(bool)
    n = len(y)
    check(n > 0, "is_poison is empty")
    rem = _removed_mask(removed, n)
    num_removed, num_poisons = int(rem.sum()), int(y.sum())
    tp = int((rem & y).sum())
    clean_removed = num_removed - tp
    num_clean = n - num_poisons
    precision = tp / num_removed if num_removed else 0.0
    recall = tp / num_poisons if num_poisons else None
    if recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    out: Dict[str, Any] = {
        "precision": float(precision),
        "recall": recall,
        "f1": f1,
        "num_removed": num_removed,
        "num_poisons": num_poisons,
        "num_samples": n,
        "clean_removed": clean_removed,
        "false_removal_rate": clean_removed / num_clean if num_clean else None,
    }
    if scores is not None:
        s = _np(scores).reshape(-1)
        check(len(s) == n, f"scores have length {len(s)}, expected {n}")
        both = 0 < num_poisons < n
        out["auroc"] = auroc(s, y) if both else None
        out["auprc"] = average_precision(s, y) if num_poisons else None
        for k in ks:
            out[f"precision_at_{int(k)}"] = precision_at_k(s, y, int(k))
    return out


def localisation_metrics(pred_boxes: Any, true_boxes: Any, iou_threshold: float = 0.5) -> Dict[str, Any]:
    """Trigger localisation of predicted windows against the true trigger boxes.

    Args:
        pred_boxes, true_boxes: (P, 4) int boxes (x0, y0, x1, y1), exclusive ends, row-aligned.

    Returns ``trigger_detection_accuracy`` (share with IoU >= ``iou_threshold``), ``hit_rate``
    (share whose predicted box contains the true box centre cx = (x0 + x1) / 2, cy = (y0 + y1) / 2
    in continuous coordinates, i.e. px0 <= cx <= px1 and py0 <= cy <= py1), ``mean_iou`` and
    ``count``. Empty input: values None, count 0.
    """
    from solo_poisoncam.poison.manifest import box_iou

    p = _np(pred_boxes).astype(np.float64).reshape(-1, 4)
    t = _np(true_boxes).astype(np.float64).reshape(-1, 4)
    check(len(p) == len(t), f"pred_boxes and true_boxes differ in length ({len(p)} vs {len(t)})")
    if len(p) == 0:
        return {"trigger_detection_accuracy": None, "hit_rate": None, "mean_iou": None, "count": 0}
    iou = box_iou(p, t)
    cx, cy = (t[:, 0] + t[:, 2]) / 2, (t[:, 1] + t[:, 3]) / 2
    hit = (p[:, 0] <= cx) & (cx <= p[:, 2]) & (p[:, 1] <= cy) & (cy <= p[:, 3])
    return {
        "trigger_detection_accuracy": float(np.mean(iou >= iou_threshold)),
        "hit_rate": float(np.mean(hit)),
        "mean_iou": float(np.mean(iou)),
        "count": int(len(p)),
    }


def confusion_matrix(pred: Any, true: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: rows true class, columns predicted class. ``pred``, ``true``: (M,)."""
    p, t = _np(pred).reshape(-1).astype(np.int64), _np(true).reshape(-1).astype(np.int64)
    c = int(num_classes)
    check(c >= 1, f"num_classes must be >= 1, got {num_classes}")
    check(len(p) == len(t), f"pred and true differ in length ({len(p)} vs {len(t)})")
    check(len(p) == 0 or (min(p.min(), t.min()) >= 0 and max(p.max(), t.max()) < c),
          f"labels must lie in [0, {c})")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c)


def attack_metrics(pred_patched: Any, true_patched: Any, target: int, pred_clean: Any = None,
                   true_clean: Any = None, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Downstream backdoor success (SSL-Backdoor / PatchSearch convention).

    Args:
        pred_patched, true_patched: (M,) predictions and true labels of triggered images; rows whose
            true label is ``target`` are excluded from ``asr`` and ``fp``.
        pred_clean, true_clean: optional (M',) predictions and labels of the clean images.

    Returns ``asr`` (non-target patched predicted as target / non-target patched; None if there are
    none), ``fp`` (that count), ``patched_acc1`` (top-1 over all patched rows), ``num_patched``,
    ``num_patched_nontarget``; with clean predictions ``clean_acc1``, ``clean_fp`` (non-target clean
    predicted as target) and ``clean_target_rate`` (clean_fp / non-target clean); with
    ``num_classes`` ``confusion_patched`` as a nested C x C list (rows true, columns predicted).
    """
    target = int(target)
    p, t = _np(pred_patched).reshape(-1), _np(true_patched).reshape(-1)
    check(len(p) == len(t), f"pred_patched and true_patched differ in length ({len(p)} vs {len(t)})")
    nontarget = t != target
    fp = int(np.sum(p[nontarget] == target))
    n_nt = int(nontarget.sum())
    out: Dict[str, Any] = {
        "asr": fp / n_nt if n_nt else None,
        "fp": fp,
        "patched_acc1": float(np.mean(p == t)) if len(p) else None,
        "num_patched": int(len(p)),
        "num_patched_nontarget": n_nt,
    }
    check((pred_clean is None) == (true_clean is None), "give both pred_clean and true_clean, or neither")
    if pred_clean is not None:
        pc, tc = _np(pred_clean).reshape(-1), _np(true_clean).reshape(-1)
        check(len(pc) == len(tc), f"pred_clean and true_clean differ in length ({len(pc)} vs {len(tc)})")
        nt_c = tc != target
        clean_fp = int(np.sum(pc[nt_c] == target))
        out["clean_acc1"] = float(np.mean(pc == tc)) if len(pc) else None
        out["clean_fp"] = clean_fp
        out["clean_target_rate"] = clean_fp / int(nt_c.sum()) if nt_c.any() else None
    if num_classes is not None:
        check(0 <= target < int(num_classes), f"target {target} outside [0, {num_classes})")
        out["confusion_patched"] = confusion_matrix(p, t, num_classes).tolist()
    return out


def mean_metrics(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Key-wise mean of metric dicts of the same shape (one per label draw, say): numbers (not bools)
    are averaged, nested lists element-wise; a key that is None in any row is None; other values
    are the first row's. One row comes back unchanged."""
    check(len(rows) > 0, "mean_metrics needs at least one row")
    if len(rows) == 1:
        return dict(rows[0])
    out: Dict[str, Any] = {}
    for k, v in rows[0].items():
        vs = [r.get(k) for r in rows]
        if any(x is None for x in vs):
            out[k] = None
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(np.mean(vs))
        elif isinstance(v, list):
            out[k] = np.mean(np.asarray(vs, dtype=np.float64), axis=0).tolist()
        else:
            out[k] = v
    return out


__all__ = ["auroc", "average_precision", "precision_at_k", "detection_metrics", "localisation_metrics",
           "attack_metrics", "confusion_matrix", "mean_metrics"]
