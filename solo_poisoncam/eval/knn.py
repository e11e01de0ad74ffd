"""Weighted kNN classification on frozen features (DINO / InstDisc style), chunked, any device."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from solo_poisoncam.checks import check


def _tensor(x: Any, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.to(device) if device is not None else t


@torch.no_grad()
def knn_predict(query: Any, bank: Any, bank_labels: Any, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 4096, exclude_self: bool = False,
                query_indexes: Optional[Any] = None) -> torch.Tensor:
    """Predict labels of ``query`` (B, D) from ``bank`` (N, D) with labels (N,).

    Cosine similarity (both sides L2-normalised here); each of the ``k`` nearest bank entries votes
    for its label with weight exp(sim / ``temperature``); the class with the largest total wins
    (ties: lowest class index). Queries are processed ``chunk`` rows at a time on ``query``'s device.

    ``exclude_self``: leave-one-out when the queries are bank entries: query i never matches bank row
    ``query_indexes[i]`` (default ``arange(B)``, i.e. ``query`` is ``bank`` or its first B rows).

    Returns: (B,) int64 predictions on ``query``'s device.
    """
    q = _tensor(query)
    device = q.device
    b = _tensor(bank, device)
    y = _tensor(bank_labels, device).reshape(-1).long()
    check(q.dim() == 2 and b.dim() == 2, f"query and bank must be (B, D) and (N, D), got "
          f"{tuple(q.shape)} and {tuple(b.shape)}")
    check(q.shape[1] == b.shape[1], f"query and bank dims differ ({q.shape[1]} vs {b.shape[1]})")
    check(len(y) == len(b), f"bank_labels has length {len(y)}, expected {len(b)}")
    check(len(b) > 0, "the kNN bank is empty")
    check(int(num_classes) >= 1, f"num_classes must be >= 1, got {num_classes}")
    check(len(y) == 0 or (int(y.min()) >= 0 and int(y.max()) < int(num_classes)),
          f"bank_labels must lie in [0, {num_classes})")
    check(int(k) >= 1, f"k must be >= 1, got {k}")
    check(temperature > 0, f"temperature must be > 0, got {temperature}")
    check(int(chunk) >= 1, f"chunk must be >= 1, got {chunk}")
    if exclude_self:
        qi = (torch.arange(len(q), device=device) if query_indexes is None
              else _tensor(query_indexes, device).reshape(-1).long())
        check(len(qi) == len(q), f"query_indexes has length {len(qi)}, expected {len(q)}")
        check(len(qi) == 0 or (int(qi.min()) >= 0 and int(qi.max()) < len(b)),
              f"query_indexes must lie in [0, {len(b)})")
        check(len(b) >= 2, "exclude_self needs a bank of at least 2 entries")
    k = min(int(k), len(b) - (1 if exclude_self else 0))
    q = F.normalize(q.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    out = torch.empty(len(q), dtype=torch.long, device=device)
    for start in range(0, len(q), int(chunk)):
        sim = q[start:start + chunk] @ b.T  # (c, N)
        if exclude_self:
            rows = torch.arange(len(sim), device=device)
            sim[rows, qi[start:start + chunk]] = float("-inf")
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # shifted for stability
        votes = torch.zeros(len(sim), int(num_classes), device=device)
        votes.scatter_add_(1, y[top_idx], weights)
        out[start:start + chunk] = votes.argmax(dim=1)
    return out


def knn_accuracy(query: Any, query_labels: Any, bank: Any, bank_labels: Any, num_classes: int,
                 **kwargs) -> float:
    """Top-1 accuracy of :func:`knn_predict` against ``query_labels`` (B,); kwargs go to it."""
    pred = knn_predict(query, bank, bank_labels, num_classes, **kwargs)
    true = _tensor(query_labels, pred.device).reshape(-1).long()
    check(len(true) == len(pred), f"query_labels has length {len(true)}, expected {len(pred)}")
    check(len(pred) > 0, "no queries")
    return float((pred == true).float().mean())


__all__ = ["knn_predict", "knn_accuracy"]
