"""Render results.json as report.md and a self-contained report.html (images inline)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from solo_poisoncam import __version__
from solo_poisoncam.eval.backdoor import describe_outcome
from solo_poisoncam.io import write_text
from solo_poisoncam.report import tables as T

ATTACK_NOTES = {
    "blend": "The blended trigger covers the whole image: no window can contain it, so masking-based "
             "localisation (PoisonCAM and PatchSearch alike) is expected to fail here.",
    "frequency": "The frequency-domain trigger (CTRL-like) lives in DCT coefficients of the whole image: "
                 "masking-based localisation is expected to fail here.",
}


def _environment() -> Dict[str, str]:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": dev,
            "torch": torch.__version__, "solo-poisoncam": __version__, "python": platform.python_version()}


def score_histogram_svg(scores: np.ndarray, is_poison: np.ndarray, bins: int = 40, width: int = 520,
                        height: int = 160) -> str:
    """Two overlaid histograms (clean grey, poisoned red), densities normalised per group, as inline SVG."""
    lo, hi = float(np.min(scores)), float(np.max(scores))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" role="img">',
             f'<rect width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>']
    bar_w = width / bins
    for mask, colour in ((~is_poison, "#7a7a7a"), (is_poison, "#d62728")):
        if not mask.any():
            continue
        h, _ = np.histogram(scores[mask], bins=edges)
        h = h / h.max()
        for i, v in enumerate(h):
            if v > 0:
                parts.append(f'<rect x="{i * bar_w:.1f}" y="{height * (1 - v):.1f}" width="{bar_w:.1f}" '
                             f'height="{height * v:.1f}" fill="{colour}" fill-opacity="0.55"/>')
    parts.append(f'<text x="2" y="{height + 14}" font-size="11">{lo:.2f}</text>')
    parts.append(f'<text x="{width - 40}" y="{height + 14}" font-size="11">{hi:.2f}</text>')
    parts.append(f'<text x="{width / 2 - 90}" y="{height + 27}" font-size="11">poison score: '
                 f'<tspan fill="#d62728">poisoned</tspan> vs <tspan fill="#555">clean</tspan> (each scaled to its peak)</text>')
    parts.append("</svg>")
    return "".join(parts)


def _scores_and_truth(out: Path, method: str, poison_indexes: List[int]):
    folder = out / f"detect-{method}"
    if not (folder / "scores.npy").is_file():
        return None
    scores = np.load(folder / "scores.npy")
    idx = np.load(folder / "indexes.npy")
    truth = np.isin(idx, np.asarray(poison_indexes))
    return scores, truth


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _html_table(table: T.Table) -> str:
    head, rows = table
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


# Why the backdoor table and the downstream table's "undefended" row may show different ASRs.
BANKS_DIFFER = ("Its kNN-ASR searches the training features as trained on (poisoned images included) and its probe "
                "uses 10% of the clean training labels, while the downstream table's kNN bank and probe use only "
                "the labelled clean subset of each budget, so the two tables' ASRs can differ for the same model.")


def write_report(results: Dict[str, Any], out: Path) -> Dict[str, Path]:
    """Write OUT/report.md and OUT/report.html from the chain's results; returns their paths."""
    from solo_poisoncam.poison import PoisonManifest

    out = Path(out)
    cfg, bd = results["config"], results["backdoor"]
    env = _environment()
    manifest = PoisonManifest.load(out / "poison")
    attack = manifest.attack.get("name")
    learned = bd["learned"]
    warn: Optional[str] = None
    if not learned:
        warn = ("The threat model did NOT learn the backdoor (see the backdoor table): detection numbers below "
                "measure nothing about the detectors. Train longer, or use a stronger trigger.")
    note = ATTACK_NOTES.get(attack)
    sections_md: List[str] = []
    sections_html: List[str] = []

    def add(title: str, md: str, html_body: str):
        sections_md.append(f"## {title}\n\n{md}\n")
        sections_html.append(f"<h2>{html.escape(title)}</h2>\n{html_body}")

    settings = [["data", f"{cfg['data']['dataset']}, {manifest.num_samples} training images"],
                ["attack", f"{attack}: {manifest.summary()}"],
                ["threat model", f"{cfg['pretrain']['method']} / {cfg['pretrain']['backbone']}, "
                                 f"{cfg['pretrain']['epochs']} epochs, batch {cfg['pretrain']['batch_size']}"],
                ["detectors", ", ".join(cfg["detect"]["methods"]) + f" (overrides: {cfg['detect'].get('settings') or 'none'})"],
                ["seed", str(cfg["seed"])], ["environment", ", ".join(f"{k} {v}" for k, v in env.items())]]
    settings_table = (["setting", "value"], settings)
    add("Settings", T.markdown(settings_table), _html_table(settings_table))
    bt = T.backdoor_table(bd)
    outcome = (f"**Backdoor {describe_outcome(bd)}** by the threat model (rule: {bd.get('rule', '')}). "
               f"{BANKS_DIFFER}")
    add("Did the attack take? Backdoor strength of the threat model", outcome + "\n\n" + T.markdown(bt),
        f"<p>{html.escape(outcome.replace('**', ''))}</p>" + _html_table(bt))
    dt = T.detection_table(results["detections"])
    det_md = T.markdown(dt) + "\n\nTrigger detection accuracy: share of poisoned images whose candidate window has IoU >= 0.5 with the true trigger box."
    add("Detection", det_md, _html_table(dt) + "<p>Trigger detection accuracy: share of poisoned images whose "
        "candidate window has IoU &ge; 0.5 with the true trigger box.</p>")
    dst = T.downstream_table(results["evaluations"])
    ds_note = ("ASR: share of non-target patched validation images predicted as the target class; FP: their count. "
               "Labels: share of the clean training labels the linear probe and kNN bank use.")
    if results.get("targeted_beyond_clean"):
        ds_note += " " + beyond_clean_sentence(results["targeted_beyond_clean"])
    if not_downstream_line(results):
        ds_note += " " + not_downstream_line(results)
    add("Downstream: is the backdoor gone, and what did the defence cost?", T.markdown(dst) + "\n\n" + ds_note,
        _html_table(dst) + f"<p>{html.escape(ds_note)}</p>")
    gal_md, gal_html = [], []
    for method in results["detections"]:
        g = out / f"detect-{method}" / "gallery.png"
        if g.is_file():
            gal_md.append(f"**{method}**: ![{method} gallery](detect-{method}/gallery.png)")
            gal_html.append(f"<h3>{html.escape(method)}</h3>{_img(g)}")
    legend = ("Top flagged images, in pairs: the image with the true trigger box (green), then the activation map "
              "(PoisonCAM) with the candidate window (red).")
    add("Detected triggers", legend + "\n\n" + "\n\n".join(gal_md), f"<p>{legend}</p>" + "".join(gal_html))
    hist_md, hist_html = [], []
    for method in results["detections"]:
        st = _scores_and_truth(out, method, manifest.indexes.tolist())
        if st is not None:
            svg = score_histogram_svg(*st)
            write_text(out / f"detect-{method}" / "scores.svg", svg)
            hist_md.append(f"**{method}**: ![scores](detect-{method}/scores.svg)")
            hist_html.append(f"<h3>{html.escape(method)}</h3>{svg}")
    add("Poison scores: poisoned vs clean", "\n\n".join(hist_md), "".join(hist_html))
    tt = T.timing_table(results.get("timings", {}))
    t_note = ("Wall time of this invocation: a stage resumed from an earlier one shows only its loading time; "
              "detect-*/metrics.json keeps what each detection stage took when computed (stage_compute_s).")
    add("Time per stage", T.markdown(tt) + "\n\n" + t_note, _html_table(tt) + f"<p>{html.escape(t_note)}</p>")

    title = f"solo-poisoncam report: {cfg.get('name', 'run')}"
    banner_md = "".join(f"> **Warning.** {w}\n\n" for w in (warn, note) if w)
    md = f"# {title}\n\n{banner_md}" + "\n".join(sections_md)
    banner_html = "".join(f'<p class="warn"><b>Warning.</b> {html.escape(w)}</p>' for w in (warn, note) if w)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1em}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f0f0f0}}h2{{border-bottom:1px solid #ddd;padding-bottom:.2em}}
.warn{{background:#fff3cd;border:1px solid #e0c060;padding:.6em}}</style></head><body>
<h1>{html.escape(title)}</h1>{banner_html}{''.join(sections_html)}</body></html>"""
    paths = {"md": out / "report.md", "html": out / "report.html"}
    write_text(paths["md"], md)
    write_text(paths["html"], page)
    return paths


def beyond_clean_sentence(b: Dict[str, Any]) -> str:
    """The targeted criterion against the clean-data SSL model, in one sentence."""
    at = f" ({', '.join(b['targeted_at'])})" if b.get("targeted_at") else ""
    where = f" at {b['label_fraction']:.0%} of the labels" if "label_fraction" in b else ""
    return (f"Targeted beyond the clean-data model: {'yes' + at if b['targeted'] else 'no'} (probe-ASR margin over the "
            f"control patch{where} {b['margin_threat']:.1%} for the undefended model vs {b['margin_clean']:.1%} for the "
            f"clean-data one; rule: {b['rule']}; a large trigger can be a shortcut SSL on clean data learns too, "
            f"and that model's ASR varies with its SSL seed).")


def console_summary(results: Dict[str, Any]) -> str:
    """The final table a person reads in the terminal."""
    bd = results["backdoor"]
    lines = [f"backdoor {describe_outcome(bd)} by the threat model "
             f"(patched->poison cluster {T.fmt(bd['threat']['patched_to_poison_cluster'], pct=True)}, control "
             f"{T.fmt(bd['threat']['control_to_poison_cluster'], pct=True)}; random-init reference "
             f"{T.fmt(bd['reference']['patched_to_poison_cluster'], pct=True)})", "",
             T.console(T.detection_table(results["detections"])), "",
             T.console(T.downstream_table(results["evaluations"]))]
    if results.get("targeted_beyond_clean"):
        lines.append(beyond_clean_sentence(results["targeted_beyond_clean"]))
    if not_downstream_line(results):
        lines.append(not_downstream_line(results))
    return "\n".join(lines)


def not_downstream_line(results: Dict[str, Any]) -> str:
    """One plain line when the attack did not take downstream (the targeted rule against the clean-data
    model fails): what the downstream table then shows. Empty when it took, or without a clean-data model."""
    beyond = results.get("targeted_beyond_clean")
    if not beyond or beyond["targeted"]:
        return ""
    return ("The attack did not take downstream: the undefended model sends patched images to the target class "
            "not clearly more often than the clean-data model does (by the rule above), so the downstream table "
            "shows what each defence costs in clean accuracy and whether patched images keep their class "
            "(patched acc), not a backdoor being removed.")
