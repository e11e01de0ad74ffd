"""What one detection stage hands the next: typed, so every stage reads the same fields whoever built them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch


@dataclass
class Context:
    """Everything a detector or a removal reads: the model, the images, the settings and the plumbing."""

    model: Any
    images: Any                                 # IndexedImages at ``side``
    cfg: Any                                    # DetectConfig
    side: int
    runner: Any
    cache: Any
    clock: Any
    features: torch.Tensor                      # (N, D) unit features of the threat model
    clustering: "Clustering"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> features, as the features stage computes them."""
        from solo_poisoncam.engine.features import unit_features

        with torch.no_grad(), self.runner.autocast(self.cfg.amp):
            return unit_features(self.model, x.to(self.runner.device))


@dataclass
class Clustering:
    """The clustering model: k-means (``centroids``, ``assignments``), the cosine head and its activation."""

    kmeans: Dict[str, torch.Tensor]
    head_state: Dict[str, torch.Tensor]
    temperature: float
    activation: Any                             # ClusterActivation on the runner's device
    key: Dict[str, Any]                         # the head stage's cache key


@dataclass
class Localisation:
    """A detector's per-image output (position j <-> ``images.indexes[j]``)."""

    scores: np.ndarray                          # (N,) poison score
    windows: np.ndarray                         # (N, 4) candidate trigger window, in the model's input pixels
    clusters: np.ndarray                        # (N,) cluster of each image
    scored: np.ndarray                          # (N,) bool: scored by the detector (PatchSearch scores some)
    flip_set: np.ndarray                        # positions of the flip-test images
    key: Dict[str, Any]                         # the last stage's cache key
    drop: Optional[np.ndarray] = None           # (N,) PoisonCAM's window drops
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # verdict's candidates


@dataclass
class Templates:
    """The trigger windows removal looks for: ``positions`` (T,) of their images, ``boxes`` (T, 4), ``reach``
    (T, 4) the box each one's extent may grow in (-1 rows: the default), matched at NCC ``ncc``."""

    positions: np.ndarray
    boxes: np.ndarray
    reach: np.ndarray
    ncc: float


@dataclass
class Verdict:
    """The label-free decision (docs/design.md, Verdict): ``found``, its numbers for metrics.json, its
    sentence, the ``templates`` removal uses (None where it does not act) and the statistics it came from."""

    found: bool
    summary: Dict[str, Any]
    text: str
    statistics: Dict[str, Any]
    templates: Optional[Templates]
    key: Dict[str, Any]                         # the templates stage's cache key


@dataclass
class Removed:
    """A removal's output: ``removed`` (N,) bool; ``probability`` (N,) where it has one; ``windows`` (N, 4)
    trigger boxes it placed (rows of removed images replace the detector's windows), or None."""

    removed: np.ndarray
    probability: Optional[np.ndarray] = None
    windows: Optional[np.ndarray] = None
