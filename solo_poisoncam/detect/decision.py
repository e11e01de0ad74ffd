"""The verdict from the verdict statistics (``detect/verdict.py``): found or not, and which candidate
windows are the confirmed triggers (docs/design.md, Verdict). Kept apart from the statistics so the
cached statistics survive a change of the rule."""

from __future__ import annotations

import math

import numpy as np
import torch

from solo_poisoncam.detect.handoff import Decision, Templates, Verdict, VerdictStatistics
from solo_poisoncam.detect.stages import stage
from solo_poisoncam.detect.verdict import core_boxes, verdict_statistics


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p).

    >>> round(binomial_tail(2, 3, 0.5), 3)
    0.5
    """
    if k <= 0:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
                        for i in range(k, n + 1)))


def _held_in_group(has: np.ndarray, copies: np.ndarray, min_count: int) -> np.ndarray:
    """(C,) bool: the candidates ``has`` whose copies lie in at least ``min_count - 1`` candidate images that
    ``has`` too (``copies`` (C, C) bool: image p holds candidate t's copy). One trigger pasted on many images
    is one group; a clean image's chance copies are not a group of repeating images."""
    return has & ((np.asarray(copies, dtype=bool) & has[:, None]).sum(0) >= min_count - 1)


def _group_beyond_null(has: np.ndarray, null_has: np.ndarray, quantile: float) -> bool:
    """More candidates ``has`` than the null windows' rate ``(m + 1) / (R + 2)`` predicts (binomial tail
    below ``1 - quantile``; m of the R null windows ``null_has``)."""
    rate = (null_has.sum() + 1) / (len(null_has) + 2)
    return binomial_tail(int(has.sum()), len(has), rate) < 1 - quantile


def decide(stats: VerdictStatistics, min_count: int, margin: float = 0.0, quantile: float = 0.99,
           shift: float = 0.25) -> Decision:
    """The verdict from :func:`verdict_statistics`, by the rule of docs/design.md, Verdict (written there
    once: repeats by window, core, part or copies at other places -> learned -> confirmed -> found).

    Returns the numbers metrics.json reports and three (C,) bool arrays over the candidates: ``confirmed``
    (the triggers removal uses: exact by their own window where at least ``min_count`` are),
    ``template_core`` (to match by their core) and ``template_part`` (by their best part).
    """
    rep, null_rep = np.asarray(stats.rep), np.asarray(stats.null_rep)
    coh, null_coh = np.asarray(stats.coh, dtype=np.float64), np.asarray(stats.null_coh, dtype=np.float64)
    null_q = float(np.quantile(null_rep, quantile)) if len(null_rep) else -np.inf
    exact = np.asarray(stats.exact) >= 1
    core_count = np.asarray(stats.core_exact)
    pairs = np.asarray(stats.exact_pairs, dtype=bool)
    repeats = (rep >= min_count - 1) & (rep > null_q) & (exact | (core_count >= 1))
    null_core = np.asarray(stats.null_core_exact)
    core_q = float(np.quantile(null_core, quantile)) if len(null_core) else 0.0
    by_core = (core_count >= min_count - 1) & (core_count > core_q) & ~repeats
    repeats = repeats | by_core
    by_part = np.zeros(len(rep), dtype=bool)
    # a part with enough exact copies, and enough of the images holding it have such a part too
    has = _held_in_group(np.asarray(stats.part_exact) >= min_count - 1, pairs, min_count)
    if _group_beyond_null(has, np.asarray(stats.null_part_exact) >= min_count - 1, quantile):
        by_part = has & ~repeats
        repeats = repeats | by_part
    by_shift = np.zeros(len(rep), dtype=bool)
    if repeats.sum() < min_count:
        # lossy copies at other places; where exact copies are enough, they are the evidence and the templates
        with np.errstate(invalid="ignore"):  # NaN (no copy) compares False
            moved = np.asarray(stats.shift, dtype=np.float64) > shift
            null_moved = np.asarray(stats.null_shift, dtype=np.float64) > shift
        has = _held_in_group(moved.sum(0) >= min_count - 1, moved, min_count)
        if _group_beyond_null(has, null_moved.sum(0) >= min_count - 1, quantile):
            by_shift = has & ~repeats
            repeats = repeats | by_shift
    rep_threshold = max(float(min_count - 1), null_q, 0.0)  # as reported: at least this many others
    coh_threshold = (float(np.quantile(null_coh, quantile)) if len(null_coh) else 0.0) + margin
    coh_median = float(np.median(coh[repeats])) if repeats.any() else 0.0
    coheres = coh > coh_threshold
    learned_by = []
    if repeats.any() and coh_median > coh_threshold:
        learned_by.append("coherence")
    flip, null_flip = np.asarray(stats.flip, dtype=np.float64), np.asarray(stats.null_flip, dtype=np.float64)
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
    if confirmed.any():
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
    template_part = confirmed & by_part & ~exact
    template_core = confirmed & ~exact & ~template_part & ~by_shift  # a lossy copy's window is matched whole
    return Decision(
        found=learned and confirmed_count >= min_count, repeated=count, repeated_by_core=int(by_core.sum()),
        repeated_by_part=int(by_part.sum()), repeated_by_shift=int(by_shift.sum()), shift_threshold=shift,
        confirmed_count=confirmed_count, templates=int(confirmed.sum()), learned=learned, learned_by=learned_by,
        min_count=int(min_count), rep_threshold=round(rep_threshold, 3), coherence=round(coh_median, 6),
        coherence_threshold=round(coh_threshold, 6), quantile=quantile, null_windows=int(len(null_coh)),
        candidates=int(len(coh)), flip=round(flip_median, 6), flip_threshold=round(flip_threshold, 6),
        confirmed=confirmed, template_core=template_core, template_part=template_part)


def describe(v: Decision) -> str:
    """``backdoor found (...)`` or ``no backdoor found (...)``: both statistics and their thresholds, in words."""
    head = "backdoor found" if v.found else "no backdoor found"
    how = [f"{n} by {w} exact copies"
           for n, w in ((v.repeated_by_core, "their core's"), (v.repeated_by_part, "a part's")) if n]
    if v.repeated_by_shift:
        how.append(f"{v.repeated_by_shift} by copies more than {v.shift_threshold:g} of their side away")
    core = f" ({', '.join(how)})" if how else ""
    why = (f"{v.repeated} of {v.candidates} candidate windows repeat in >= {v.rep_threshold:g} other "
           f"candidates{core}; their median coherence {v.coherence:.3f} vs {v.coherence_threshold:.3f}, in-place "
           f"flip rate {v.flip:.3f} vs {v.flip_threshold:.3f}, the {v.quantile:.0%} quantiles of {v.null_windows} "
           f"random windows; {v.confirmed_count} confirmed, needs {v.min_count}")
    if not v.found and v.repeated >= v.min_count and not v.learned:
        why += ": a repeated pattern the model did not learn"
    return f"{head} ({why})"


def templates(decision: Decision, stats: VerdictStatistics, candidates: np.ndarray, windows: np.ndarray,
              scores: np.ndarray, cap: int, forced_top: int, ncc: float) -> Templates:
    """The trigger windows removal looks for: the confirmed candidates' windows, by their core or their best
    part where :func:`decide` says so (a part's extent may grow over the window that held it); where none is
    confirmed (``force_remove``), the ``forced_top`` highest-scored windows. At most ``cap`` of them, spread
    over the ranking."""
    chosen = decision.confirmed
    positions = candidates[chosen]
    boxes = windows[positions]
    by_core = decision.template_core[chosen]
    boxes[by_core] = core_boxes(torch.as_tensor(boxes[by_core])).numpy()
    by_part = decision.template_part[chosen]
    reach = np.full_like(boxes, -1)
    part = np.asarray(stats.part_box)[chosen][by_part]
    grow = np.tile(part[:, 2:] - part[:, :2], 2) * np.array([-1, -1, 1, 1])
    reach[by_part], boxes[by_part] = boxes[by_part] + grow, part
    if len(positions) == 0:
        positions = np.argsort(-scores, kind="stable")[:forced_top]
        boxes = windows[positions]
        reach = np.full_like(boxes, -1)
    pick = np.unique(np.linspace(0, len(positions) - 1, min(cap, len(positions))).round().astype(int))
    return Templates(positions[pick], boxes[pick], reach[pick], ncc)


def verdict(ctx, loc) -> Verdict:
    """PoisonCAM's verdict on its candidates (``loc.candidates``): the statistics (a cached stage), the
    decision and its templates (docs/design.md, Verdict)."""
    cfg, pc, runner = ctx.cfg, ctx.cfg.poisoncam, ctx.runner
    cand = loc.candidates
    key = stage("verdict").key(cfg, loc.key)

    def statistics():
        if not runner.is_main:
            return None
        return verdict_statistics(ctx.embed, ctx.clustering.activation, ctx.images, loc.clusters, loc.drop, cand,
                                  loc.windows[cand], loc.flip_set, pc.null_windows, runner.device, pc.verdict_ncc,
                                  cfg.seed, cfg.forward_batch, pc.verdict_exact, pc.verdict_part_exact)

    with ctx.clock("verdict", (len(cand) + pc.null_windows) * len(loc.flip_set)):
        stats = runner.broadcast_object(ctx.cache.get_or_compute("verdict", key, statistics))
    decision = decide(stats, pc.verdict_min, pc.verdict_margin, pc.verdict_quantile, pc.verdict_shift)
    chosen = templates(decision, stats, cand, loc.windows, loc.scores, pc.templates, pc.forced_top, pc.verdict_ncc)
    return Verdict(bool(decision.found), decision.summary(), describe(decision), stats, chosen,
                   stage("templates").key(cfg, key))
