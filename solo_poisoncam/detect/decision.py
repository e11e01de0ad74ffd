"""The verdict from the verdict statistics (``detect/verdict.py``): found or not, and which candidate
windows are the confirmed triggers (docs/design.md, Verdict). Kept apart from the statistics so the
cached statistics survive a change of the rule."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np


def decide(stats: Dict[str, np.ndarray], min_count: int, margin: float = 0.0, quantile: float = 0.99) -> Dict[str, Any]:
    """The verdict from :func:`verdict_statistics`.

    A candidate *repeats* when its repetition is at least ``min_count - 1`` (it and that many others
    share the pattern), above the null's ``quantile``, and at least one copy is exact, by the window
    (``stats["exact"]``) or by its core (``stats["core_exact"]``); or when its core alone has at least
    ``min_count - 1`` exact copies, above the null's ``quantile`` of the same count
    (``stats["null_core_exact"]``): a window 2-3 px off a pasted trigger takes a strip of varying
    background along, which breaks its own match, while the core inside the trigger is still pasted pixels.
    The pattern is *learned* when the repeating candidates' median coherence exceeds the null's
    ``quantile`` plus ``margin``, or (where the statistics hold in-place flip rates, ``flip`` and
    ``null_flip``) their median in-place flip rate exceeds the null's ``quantile`` (and 0: nothing
    moved is nothing learned). Confirmed: the repeating candidates that pass the same test themselves,
    and the repeating candidates linked to one of those by an exact copy (``stats["exact_pairs"]``, where
    the statistics hold it: the same pasted pixels); found = learned and at least ``min_count`` confirmed. ``confirmed`` (the array) marks the triggers
    removal uses: the confirmed ones exact by their own window where at least ``min_count`` are;
    ``template_core`` (the array) those of them to match by their core (not exact by their window).
    A quantile, not the maximum: a few null windows may still fall on a trigger.
    """
    rep, null_rep = np.asarray(stats["rep"]), np.asarray(stats["null_rep"])
    coh, null_coh = np.asarray(stats["coh"], dtype=np.float64), np.asarray(stats["null_coh"], dtype=np.float64)
    null_q = float(np.quantile(null_rep, quantile)) if len(null_rep) else -np.inf
    exact = np.asarray(stats["exact"]) >= 1
    core_count = np.asarray(stats.get("core_exact", np.zeros(len(rep))))
    repeats = (rep >= min_count - 1) & (rep > null_q) & (exact | (core_count >= 1))
    by_core = np.zeros(len(rep), dtype=bool)
    if stats.get("null_core_exact") is not None:  # statistics of before hold no null for it: the rule of before
        null_core = np.asarray(stats["null_core_exact"])
        core_q = float(np.quantile(null_core, quantile)) if len(null_core) else 0.0
        by_core = (core_count >= min_count - 1) & (core_count > core_q) & ~repeats
        repeats = repeats | by_core
    rep_threshold = max(float(min_count - 1), null_q, 0.0)  # as reported: at least this many others
    coh_threshold = (float(np.quantile(null_coh, quantile)) if len(null_coh) else 0.0) + margin
    coh_median = float(np.median(coh[repeats])) if repeats.any() else 0.0
    coheres = coh > coh_threshold
    learned_by = []
    if repeats.any() and coh_median > coh_threshold:
        learned_by.append("coherence")
    flip_median = flip_threshold = None
    if stats.get("flip") is not None and stats.get("null_flip") is not None:
        flip, null_flip = np.asarray(stats["flip"], dtype=np.float64), np.asarray(stats["null_flip"], dtype=np.float64)
        flip_threshold = max(float(np.quantile(null_flip, quantile)) if len(null_flip) else 0.0, 0.0)
        flip_median = float(np.median(flip[repeats])) if repeats.any() else 0.0
        if repeats.any() and flip_median > flip_threshold:
            learned_by.append("in-place flip")
            coheres = coheres | (flip > flip_threshold)
    learned = bool(learned_by)
    # the triggers removal uses: repeating candidates that each pass the test beyond the null themselves
    # (a clean texture that happens to repeat, e.g. among near-identical garments, does not)
    confirmed = repeats & coheres & learned
    # and the exact copies of those: the same pasted pixels are the same trigger, whichever copy's window
    # moved fewer flip images (a copy's own flip rate varies with its window's strip of background)
    if stats.get("exact_pairs") is not None and confirmed.any():
        pairs = np.asarray(stats["exact_pairs"], dtype=bool)
        linked = (pairs | pairs.T)[:, confirmed].any(1)
        confirmed = confirmed | (repeats & linked)
    count, confirmed_count = int(repeats.sum()), int(confirmed.sum())
    # the templates removal uses: the confirmed windows with an exact copy of their own where there are
    # enough of them (a window with a strip of background, exact only by its core, places the trigger
    # less well: on Fashion-MNIST they took trigger detection accuracy from 0.996 to 0.952)
    if int((confirmed & exact).sum()) >= min_count:
        confirmed = confirmed & exact
    # a template exact only by its core is matched by its core: the window's strip of background agrees
    # with the background of every copy, and the trigger's box grown from it took most of the image
    # (Fashion-MNIST, 0.5% of the set, seed 0: IoU >= 0.5 on 3 of 25 poisons by the window, 25 by the core)
    template_core = confirmed & ~exact
    out = {"found": learned and confirmed_count >= min_count, "repeated": count,
           "repeated_by_core": int(by_core.sum()),
           "confirmed_count": confirmed_count, "templates": int(confirmed.sum()), "learned": learned,
           "learned_by": learned_by,
           "min_count": int(min_count), "rep_threshold": round(rep_threshold, 3),
           "coherence": round(coh_median, 6), "coherence_threshold": round(coh_threshold, 6),
           "quantile": quantile, "null_windows": int(len(null_coh)), "candidates": int(len(coh)),
           "confirmed": confirmed, "template_core": template_core}
    if flip_median is not None:
        out.update({"flip": round(flip_median, 6), "flip_threshold": round(flip_threshold, 6)})
    return out


def describe(verdict: Dict[str, Any]) -> str:
    """``backdoor found (...)`` or ``no backdoor found (...)``: both statistics and their thresholds, in words."""
    v = verdict
    head = "backdoor found" if v["found"] else "no backdoor found"
    flip = (f", in-place flip rate {v['flip']:.3f} vs {v['flip_threshold']:.3f}" if v.get("flip") is not None else "")
    core = f" ({v['repeated_by_core']} by their core's exact copies)" if v.get("repeated_by_core") else ""
    why = (f"{v['repeated']} of {v['candidates']} candidate windows repeat in >= {v['rep_threshold']:g} other "
           f"candidates{core}; their median coherence {v['coherence']:.3f} vs {v['coherence_threshold']:.3f}{flip}, the "
           f"{v['quantile']:.0%} quantile{'s' if flip else ''} of {v['null_windows']} random windows; {v['confirmed_count']} confirmed, "
           f"needs {v['min_count']}")
    if not v["found"] and v["repeated"] >= v["min_count"] and not v["learned"]:
        why += ": a repeated pattern the model did not learn"
    return f"{head} ({why})"
