"""Projection / prediction MLPs and the cosine cluster head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    """Linear-BN-ReLU-Linear, the projector / predictor shape of SimCLR, BYOL and SimSiam."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CosineClusterHead(nn.Module):
    """p(cluster | x) = softmax_k(cos(f(x), mu_k) / temperature): the downstream clustering model.

    Initialised from k-means centroids (K, D); the centroids are trainable so the head can be
    fine-tuned on the k-means pseudo-labels.
    """

    def __init__(self, centroids: torch.Tensor, temperature: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(centroids.detach().clone().float(), dim=1))
        self.temperature = float(temperature)

    @property
    def num_clusters(self) -> int:
        return self.weight.shape[0]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) = cosine similarities / temperature."""
        return F.normalize(feats, dim=1) @ F.normalize(self.weight, dim=1).t() / self.temperature
