"""The poison classifier (PatchSearch's last stage, shared by PoisonCAM and PatchSearch).

An ensemble of small CNNs trained from scratch to tell images with a candidate trigger pasted
(positives) from untouched ones (negatives). Triggers are the windows of the ``topk`` highest
scored images; training images come from the ranked set minus its top ``top_p`` share (likely
poisons) and the bottom ``topk``; the top / bottom ``topk`` images are the validation set for
early stopping. The ensemble's averaged logits label every training image.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.handoff import Removed
from solo_poisoncam.detect.stages import stage
from solo_poisoncam.detect.window import crop_boxes, paste_patches
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.io import hash_obj
from solo_poisoncam.models.backbones import ConvNet
from solo_poisoncam.ssl.augment import color_jitter, random_grayscale, random_resized_crop


@dataclass
class ClassifierConfig:
    topk: int = 20              # triggers taken from the top-k ranked images; also the validation size
    top_p: float = 0.10         # share of top-ranked images kept out of the training pool
    models: int = 3             # ensemble size
    iters: int = 1000
    batch_size: int = 64
    lr: float = 0.01
    paste_size: tuple = (0.09, 0.36)  # pasted trigger side as a share of the image side (PatchSearch 20-80 / 224)
    paste_margin: float = 10 / 224    # kept free at the border, share of the side (PatchSearch 10 / 224)
    eval_every: int = 20
    patience: int = 10          # stop once the validation F1 has not changed for this many evaluations
    seed: int = 0


class PoisonNet(nn.Module):
    """A small from-scratch binary classifier on [0, 1] images."""

    def __init__(self):
        super().__init__()
        self.body = ConvNet((16, 32, 32, 64, 64, 128))
        self.fc = nn.Linear(self.body.num_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x * 2 - 1))


def _f1_percent(logits: torch.Tensor, labels: torch.Tensor) -> int:
    pred = logits.argmax(1)
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    return int(100 * 2 * tp / max(1, 2 * tp + fp + fn))


def _paste_random(x: torch.Tensor, patches: List[torch.Tensor], which: torch.Tensor, sizes: torch.Tensor,
                  g: torch.Generator, margin: int = 0) -> torch.Tensor:
    """Paste patch ``which[i]`` resized to side ``sizes[i]`` at a random place in image i (grouped by side),
    its corner in [margin, side - size - margin) as PatchSearch's ``paste_poison``."""
    s = x.shape[-1]
    out = x.clone()
    for side in torch.unique(sizes).tolist():
        rows = torch.nonzero(sizes == side).flatten()
        resized = torch.stack([F.interpolate(patches[int(which[r])][None], size=(side, side), mode="bilinear",
                                             align_corners=False)[0] for r in rows])
        lo = min(margin, s - side)
        hi = max(lo + 1, s - side - margin)
        pos = torch.stack([torch.randint(lo, hi, (len(rows),), generator=g),
                           torch.randint(lo, hi, (len(rows),), generator=g)], 1).to(x.device)
        out[rows] = paste_patches(out[rows], resized, pos)
    return out


def train_one(images: torch.Tensor, pool: np.ndarray, patches: List[torch.Tensor], val_x: torch.Tensor,
              val_y: torch.Tensor, cfg: ClassifierConfig, seed: int, device: torch.device) -> PoisonNet:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = PoisonNet().to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iters)
    s = images.shape[-1]
    lo, hi = max(1, round(cfg.paste_size[0] * s)), max(2, round(cfg.paste_size[1] * s))
    margin = round(cfg.paste_margin * s)
    history: List[int] = []
    for it in range(cfg.iters):
        net.train()
        pick = torch.from_numpy(pool[torch.randint(0, len(pool), (cfg.batch_size,), generator=g).numpy()])
        x = images[pick].to(device).float() / 255
        # PatchSearch's order: crop, paste the trigger, then jitter, greyscale and flip the pasted image too
        x = random_resized_crop(x, s, (0.2, 1.0), generator=None)
        y = (torch.rand(cfg.batch_size, generator=g) < 0.5).long()
        pos = torch.nonzero(y).flatten()
        if len(pos):
            which = torch.randint(0, len(patches), (len(pos),), generator=g)
            sizes = torch.randint(lo, min(hi, s) + 1, (len(pos),), generator=g)
            x[pos.to(device)] = _paste_random(x[pos.to(device)], patches, which, sizes, g, margin)
        x = random_grayscale(color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8), p=0.2)
        x = torch.where((torch.rand(len(x), generator=g) < 0.5).to(device)[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(net(x), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % cfg.eval_every == 0:
            net.eval()
            with torch.no_grad():
                history.append(_f1_percent(net(val_x), val_y))
            if len(history) > cfg.patience and len(set(history[-cfg.patience:])) == 1:
                break
    return net.eval()


def poison_classifier(images: IndexedImages, scores: np.ndarray, windows: np.ndarray, runner: Runner,
                      cfg: Optional[ClassifierConfig] = None) -> Dict[str, np.ndarray]:
    """Train the ensemble (on rank 0, broadcast) and label every image.

    Args:
        images: the training images, position j <-> ``scores[j]``, ``windows[j]``.
        scores: (N,) poison scores, higher = more suspicious.
        windows: (N, 4) candidate trigger boxes.

    Returns:
        ``{"probability": (N,) p(poison), "removed": (N,) bool}``.
    """
    cfg = cfg or ClassifierConfig()
    n = len(images)
    order = np.argsort(-scores, kind="stable")
    k = min(cfg.topk, max(1, n // 4))
    device = runner.device
    state = None
    if runner.is_main:
        all_x = images.as_tensor()
        top = torch.as_tensor(order[:k])
        boxes = torch.as_tensor(windows[order[:k]]).long()
        patches = [crop_boxes(all_x[top[i:i + 1]].float() / 255, boxes[i:i + 1])[0].to(device) for i in range(k)]
        val_idx = np.concatenate([order[:k], order[-k:]])
        val_x = all_x[torch.as_tensor(val_idx)].to(device).float() / 255
        val_y = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(device)
        pool = order[int(math.ceil(cfg.top_p * n)): n - k]
        if len(pool) == 0:
            pool = order[k:]
        state = []
        for m in range(cfg.models):
            start = time.perf_counter()
            state.append(train_one(all_x, pool, patches, val_x, val_y, cfg, cfg.seed + m, device).state_dict())
            runner.info(f"poison classifier: model {m + 1}/{cfg.models} trained in {time.perf_counter() - start:.1f} s")
    state = runner.broadcast_object(state)
    nets = []
    for sd in state:
        net = PoisonNet().to(device)
        net.load_state_dict(sd)
        nets.append(net.eval())

    def fn(_, x):
        x = x.float() / 255
        logits = torch.stack([net(x).float() for net in nets]).mean(0)
        return F.softmax(logits, 1)[:, 1]

    prob = runner.map_images(fn, images, batch_size=512, desc="poison classifier").numpy()
    return {"probability": prob, "removed": prob > 0.5}


def remove(ctx, loc, verdict) -> Removed:
    """The ``classifier`` removal (``detect/registry.py``): PatchSearch's poison classifier on the detector's
    top-ranked windows."""
    key = stage("classifier").key(ctx.cfg, loc.key, method=ctx.cfg.method,
                                  scores=hash_obj(loc.scores.astype(np.float64), loc.windows.astype(np.int64)))
    with ctx.clock("classifier", len(ctx.images)):
        res = ctx.cache.get_or_compute("classifier", key, lambda: poison_classifier(
            ctx.images, loc.scores, loc.windows, ctx.runner, ctx.cfg.classifier))
    return Removed(res["removed"], probability=res["probability"])
