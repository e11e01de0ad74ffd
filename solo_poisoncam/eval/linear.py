"""Linear probe on precomputed frozen features, with a stratified label budget (1%, 10%, 100%)."""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from solo_poisoncam.checks import check


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def label_budget_indexes(targets: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted int64 indexes of a stratified subset of ``targets`` (N,).

    Each class with n_c samples keeps round(``fraction`` * n_c) of them, at least 1 (at most n_c),
    drawn without replacement under ``seed``. ``fraction`` in (0, 1]; 1.0 keeps everything.
    """
    fraction = float(fraction)
    check(0.0 < fraction <= 1.0, f"label budget fraction must be in (0, 1], got {fraction}")
    t = _np(targets).reshape(-1)
    check(len(t) > 0, "targets are empty")
    if fraction == 1.0:
        return np.arange(len(t), dtype=np.int64)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(t):
        idx = np.flatnonzero(t == c)
        n = min(len(idx), max(1, int(np.floor(fraction * len(idx) + 0.5))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


class LinearProbe(nn.Module):
    """Optional L2 normalisation, standardisation with training statistics, then a linear layer.

    ``forward(x (N, D)) -> logits (N, C)``; :meth:`predict` gives (N,) int64 labels.
    """

    def __init__(self, dim: int, num_classes: int, l2_normalize: bool = True):
        super().__init__()
        self.l2_normalize = l2_normalize
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.linear = nn.Linear(dim, num_classes)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, D) input of the linear layer: normalised and standardised features."""
        x = x.float()
        if self.l2_normalize:
            x = F.normalize(x, dim=1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.prepare(x))

    @torch.no_grad()
    def predict(self, features: Any, chunk: int = 65536) -> torch.Tensor:
        """(N,) int64 predicted labels of ``features`` (N, D), on the probe's device."""
        device = self.mean.device
        x = torch.as_tensor(features).to(device)
        check(x.dim() == 2 and x.shape[1] == self.mean.numel(),
              f"features must be (N, {self.mean.numel()}), got {tuple(x.shape)}")
        was_training = self.training
        self.eval()
        out = torch.cat([self(x[i:i + chunk]).argmax(1) for i in range(0, len(x), chunk)]) if len(x) \
            else torch.empty(0, dtype=torch.long, device=device)
        self.train(was_training)
        return out


def train_linear_probe(features: Any, targets: Any, num_classes: int, epochs: int = 100, lr: float = 1e-2,
                       weight_decay: float = 1e-4, batch_size: Optional[int] = 256, seed: int = 0,
                       device: Optional[Any] = None, standardize: bool = True,
                       l2_normalize: bool = True) -> LinearProbe:
    """Train a :class:`LinearProbe` on frozen ``features`` (N, D) with labels ``targets`` (N,).

    Features are L2-normalised, then standardised with the training mean/std (SSL-Backdoor CompRess
    protocol; ``standardize=False`` skips the latter). Cross-entropy, AdamW with a per-step cosine
    schedule, mini-batches of ``batch_size`` (None or >= N: full batch), zero-initialised weights,
    shuffling from ``seed``: the result is deterministic. ``device``: default the features' device.
    Returns the probe in eval mode.
    """
    x = features if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    device = torch.device(device) if device is not None else x.device
    x = x.to(device).float()
    y = torch.as_tensor(_np(targets)).reshape(-1).long().to(device)
    check(x.dim() == 2, f"features must be (N, D), got {tuple(x.shape)}")
    n, d = x.shape
    check(n > 0, "features are empty")
    check(len(y) == n, f"targets has length {len(y)}, expected {n}")
    c = int(num_classes)
    check(c >= 2, f"num_classes must be >= 2, got {num_classes}")
    check(int(y.min()) >= 0 and int(y.max()) < c, f"targets must lie in [0, {c})")
    check(int(epochs) >= 1, f"epochs must be >= 1, got {epochs}")
    check(lr > 0, f"lr must be > 0, got {lr}")
    bs = n if batch_size is None or int(batch_size) >= n else int(batch_size)
    check(bs >= 1, f"batch_size must be >= 1, got {batch_size}")

    probe = LinearProbe(d, c, l2_normalize=l2_normalize).to(device)
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    if standardize:
        z = F.normalize(x, dim=1) if l2_normalize else x
        probe.mean.copy_(z.mean(0))
        probe.std.copy_(z.std(0, unbiased=False).clamp_min(1e-6))
    with torch.no_grad():
        z = probe.prepare(x)  # fixed preprocessing: computed once

    # Softmax regression with closed-form gradients and a hand-rolled AdamW: torch.optim would
    # import torch._dynamo on first use (seconds), which dwarfs training a linear layer.
    steps_per_epoch = (n + bs - 1) // bs
    total = int(epochs) * steps_per_epoch
    w, b = probe.linear.weight.detach(), probe.linear.bias.detach()
    state = [(p, torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    onehot = F.one_hot(y, c).float()
    step = 0
    with torch.no_grad():
        for _ in range(int(epochs)):
            perm = torch.randperm(n, generator=gen).to(device) if bs < n else None
            for i in range(steps_per_epoch):
                if perm is None:
                    zb, tb = z, onehot
                else:
                    idx = perm[i * bs:(i + 1) * bs]
                    zb, tb = z[idx], onehot[idx]
                g = (torch.softmax(zb @ w.T + b, dim=1) - tb) / len(zb)  # d(mean CE)/d(logits)
                step_lr = 0.5 * lr * (1 + math.cos(math.pi * step / total))  # cosine, per step
                step += 1
                for (p, m, v), grad in zip(state, (g.T @ zb, g.sum(0))):
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    p.mul_(1 - step_lr * weight_decay)
                    denom = (v / (1 - beta2 ** step)).sqrt_().add_(eps)
                    p.addcdiv_(m, denom, value=-step_lr / (1 - beta1 ** step))
    return probe.eval()


def probes_over_draws(features: torch.Tensor, targets: torch.Tensor, num_classes: int, fraction: float, seed: int,
                      draws: int, epochs: int = 100, **probe_kwargs: Any) -> Iterator[Tuple[torch.Tensor, LinearProbe]]:
    """``draws`` probes on ``fraction`` of the labels, each on its own draw: draw d takes the labelled
    images of ``label_budget_indexes(targets, fraction, seed + d)`` and orders its batches by the same
    seed. ``probe_kwargs`` go to :func:`train_linear_probe` (e.g. ``standardize``). Yields (the picked
    indexes, the trained probe)."""
    check(int(draws) >= 1, f"label draws must be >= 1, got {draws}")
    for d in range(int(draws)):
        pick = torch.as_tensor(label_budget_indexes(targets, fraction, seed + d))
        yield pick, train_linear_probe(features[pick], targets[pick], num_classes, epochs=epochs, seed=seed + d,
                                       **probe_kwargs)


__all__ = ["LinearProbe", "label_budget_indexes", "probes_over_draws", "train_linear_probe"]
