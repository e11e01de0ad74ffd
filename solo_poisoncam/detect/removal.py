"""Removal without a from-scratch classifier (docs/design.md, method step 6).

``probe``: a logistic-regression probe on the frozen threat model's own features, which every
image already has (the features stage). Positives: clean-looking images with a confirmed
candidate trigger pasted at a random place; negatives: the same kind of images untouched, and
with a random window of another image pasted (so the probe learns this trigger, not "a pasted
patch"). It scores every image from its cached feature in one matrix product, so its cost is a
few thousand forward passes whatever N is.

``match`` (``detect/match.py``): remove every image that holds a confirmed trigger's pattern
(normalised cross-correlation), a scan of all images against a few templates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from solo_poisoncam.detect.handoff import Removed
from solo_poisoncam.detect.stages import stage
from solo_poisoncam.detect.window import crop_boxes, paste_patches


@dataclass
class ProbeConfig:
    samples: int = 1024         # pasted positives (and as many pasted negatives); untouched negatives: the pool
    top_p: float = 0.10         # share of top-scored images kept out of the negatives
    steps: int = 100            # L-BFGS iterations
    weight_decay: float = 1e-3
    rounds: int = 2             # round 2 drops from the negatives the images round 1 removed


def crops(images: torch.Tensor, boxes: torch.Tensor) -> List[torch.Tensor]:
    """Window crops (3, h, w) in [0, 1] of uint8 images (T, 3, S, S) at boxes (T, 4)."""
    x = images.float() / 255
    return [crop_boxes(x[i:i + 1], boxes[i:i + 1])[0] for i in range(len(boxes))]


def paste_at_random(x: torch.Tensor, patches: List[torch.Tensor], which: np.ndarray, rng: np.random.Generator):
    """Image i with ``patches[which[i]]`` pasted at a random place, at its own size (grouped by size)."""
    out = x.clone()
    s = x.shape[-1]
    sides = np.array([p.shape[-1] for p in patches])[which]
    for side in np.unique(sides):
        rows = np.flatnonzero(sides == side)
        stack = torch.stack([patches[which[r]] for r in rows]).to(x)
        pos = torch.as_tensor(rng.integers(0, s - side + 1, size=(len(rows), 2)))
        out[torch.as_tensor(rows)] = paste_patches(out[torch.as_tensor(rows)], stack, pos)
    return out


def _embed(embed, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([embed(x[i:i + chunk]).float().cpu() for i in range(0, len(x), chunk)])


def _fit(x: torch.Tensor, y: torch.Tensor, steps: int, weight_decay: float):
    """L2-regularised logistic regression by full-batch L-BFGS; returns (w, b)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    pos_weight = (y == 0).sum() / (y == 1).sum().clamp_min(1)  # balanced classes

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y, pos_weight=pos_weight) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def feature_probe(embed: Callable[[torch.Tensor], torch.Tensor], images, feats: torch.Tensor, scores: np.ndarray,
                  trig_images: torch.Tensor, trig_boxes: torch.Tensor, null_images: torch.Tensor,
                  null_boxes: torch.Tensor, cfg: ProbeConfig, seed: int = 0) -> Dict[str, np.ndarray]:
    """p(poison) of every image from its feature.

    Args:
        embed: uint8-free [0, 1] images (B, 3, S, S) -> L2-normalised features (B, D), as the features stage.
        images: the training images (``take(positions)`` -> uint8), aligned with ``feats`` and ``scores``.
        trig_images, trig_boxes: uint8 images and boxes of the confirmed candidates (the triggers).
        null_images, null_boxes: uint8 images and boxes of random windows (pasted negatives).
    """
    rng = np.random.default_rng(seed)
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    pool = np.sort(order[int(math.ceil(cfg.top_p * n)):])
    if len(pool) == 0:
        pool = np.arange(n)
    triggers = crops(trig_images, trig_boxes)
    nulls = crops(null_images, null_boxes)
    src = rng.choice(pool, size=cfg.samples, replace=len(pool) < cfg.samples)
    base = images.take(src).float() / 255
    pos = _embed(embed, paste_at_random(base, triggers, rng.integers(0, len(triggers), cfg.samples), rng))
    neg = _embed(embed, paste_at_random(base, nulls, rng.integers(0, len(nulls), cfg.samples), rng))
    removed = np.zeros(n, dtype=bool)
    prob = np.zeros(n)
    for _ in range(max(1, cfg.rounds)):
        clean = pool[~removed[pool]]
        x = torch.cat([pos, neg, feats[torch.as_tensor(clean)].float()])
        y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg) + len(clean))])
        with torch.enable_grad():
            w, b = _fit(x, y, cfg.steps, cfg.weight_decay)
        prob = torch.sigmoid(feats.float() @ w + b).numpy()
        removed = prob > 0.5
    return {"probability": prob, "removed": removed}


def remove(ctx, loc, verdict) -> Removed:
    """The ``probe`` removal (``detect/registry.py``): the verdict's templates pasted are the positives, its
    null windows pasted the negatives."""
    t, stats = verdict.templates, verdict.statistics
    key = stage("probe").key(ctx.cfg, verdict.key)
    with ctx.clock("probe", len(ctx.images)):
        res = ctx.cache.get_or_compute("probe", key, lambda: feature_probe(
            ctx.embed, ctx.images, ctx.features, loc.scores, ctx.images.take(t.positions), torch.as_tensor(t.boxes),
            ctx.images.take(stats.null_src), torch.as_tensor(stats.null_boxes), ctx.cfg.probe, ctx.cfg.seed))
    return Removed(res["removed"], probability=res["probability"])
