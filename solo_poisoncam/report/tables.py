"""The report's tables as rows of strings: one function per table, shared by Markdown, HTML and the console."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

Table = Tuple[List[str], List[List[str]]]


def fmt(v: Any, digits: int = 3, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.1%}" if pct else f"{v:.{digits}f}"
    return str(v)


def backdoor_table(bd: Dict[str, Any]) -> Table:
    rows = []
    for key, label in (("purity", "poisons in poison-majority clusters"),
                       ("patched_to_poison_cluster", "patched val -> poison cluster"),
                       ("control_to_poison_cluster", "control patch -> poison cluster"),
                       ("knn_asr_patched", "kNN-ASR patched"), ("knn_asr_control", "kNN-ASR control"),
                       ("probe_asr_patched", "linear-probe ASR patched"), ("probe_asr_control", "linear-probe ASR control"),
                       ("probe_clean_acc1", "linear-probe clean accuracy"),
                       ("probe_all_asr_patched", "linear-probe ASR patched, every label"),
                       ("probe_all_asr_control", "linear-probe ASR control, every label")):
        if key not in bd["threat"]:
            continue  # a report from before that measurement
        rows.append([label, fmt(bd["threat"].get(key), pct=True), fmt(bd["reference"].get(key), pct=True)])
    draws = bd["threat"].get("probe_asr_patched_draws") or []
    if len(draws) > 1:
        rows.append([f"linear-probe ASR patched per label draw ({len(draws)}; the rows above: their mean)",
                     " / ".join(fmt(a, pct=True) for a in draws),
                     " / ".join(fmt(a, pct=True) for a in bd["reference"].get("probe_asr_patched_draws") or [])])
    return ["", "threat model", f"reference ({bd['reference'].get('kind', 'random-init')})"], rows


def verdict_cell(v: Optional[Dict[str, Any]]) -> str:
    """A verdict's short form: found or not, with its statistics against their thresholds."""
    if not v:
        return "n/a (PatchSearch has none)"
    return (("backdoor found" if v["found"] else "no backdoor found") + f" ({v['repeated']} repeating windows, "
            f"coherence {v['coherence']:.3f} vs {v['coherence_threshold']:.3f}"
            + (f", in-place flip rate {v['flip']:.3f} vs {v['flip_threshold']:.3f}" if v.get("flip") is not None else "")
            + ")" + (", nothing removed" if v.get("removal_skipped") else ""))


def detection_table(detections: Dict[str, Dict[str, Any]]) -> Table:
    head = ["method", "verdict (label-free)", "removed", "precision", "recall", "F1", "AUROC", "AUPRC", "P@20",
            "trigger det. acc", "hit rate", "mean IoU", "time (s)"]
    rows = []
    for method, doc in detections.items():
        m, t = doc["metrics"], doc.get("timings", {})
        loc = m.get("localisation_all", {})
        total = t.get("total_s") or 0.0
        rows.append([method, verdict_cell(m.get("verdict")), f"{m['num_removed']}/{m['num_samples']}", fmt(m.get("precision")), fmt(m.get("recall")),
                     fmt(m.get("f1")), fmt(m.get("auroc")), fmt(m.get("auprc")), fmt(m.get("precision_at_20")),
                     fmt(loc.get("trigger_detection_accuracy")), fmt(loc.get("hit_rate")), fmt(loc.get("mean_iou")),
                     f"{total:.0f}"])
    return head, rows


def downstream_table(evaluations: Dict[str, Dict[str, Any]], fraction: Optional[str] = None) -> Table:
    head = ["model", "labels", "clean acc", "patched acc", "ASR", "FP", "control ASR", "kNN clean acc", "kNN ASR"]
    rows = []
    for name, ev in evaluations.items():
        for frac, row in ev["budgets"].items():
            if fraction is not None and frac != fraction:
                continue
            lin, knn = row["linear"], row["knn"]
            draws = row.get("label_draws", 1)
            rows.append([name, f"{float(frac):.0%}" + (f" x {draws} draws" if draws > 1 else ""), fmt(lin.get("clean_acc1"), pct=True),
                         fmt(lin.get("patched_acc1"), pct=True), fmt(lin.get("asr"), pct=True), fmt(lin.get("fp"), 1),
                         fmt(lin.get("asr_control"), pct=True), fmt(knn.get("clean_acc1"), pct=True), fmt(knn.get("asr"), pct=True)])
    return head, rows


def timing_table(timings: Dict[str, float]) -> Table:
    return ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]


def markdown(table: Table) -> str:
    head, rows = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def console(table: Table) -> str:
    head, rows = table
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])
