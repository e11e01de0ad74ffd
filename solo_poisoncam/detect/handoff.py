"""What one detection stage hands the next: typed, so every stage reads the same fields whoever built them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

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
    drop: Optional[np.ndarray] = None           # (N,) PoisonCAM's window drops (NaN: left unmasked by the cluster screen)
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # verdict's candidates


@dataclass
class Templates:
    """The trigger windows removal looks for: ``positions`` (T,) of their images, ``boxes`` (T, 4), ``reach``
    (T, 4) the box each one's extent may grow in (-1 rows: the default), matched at NCC ``ncc``."""

    positions: np.ndarray
    boxes: np.ndarray
    reach: np.ndarray
    ncc: float


@dataclass(frozen=True)
class VerdictStatistics:
    """What the verdict decides from (``detect/verdict.py``, :func:`verdict_statistics`, a cached stage): per
    candidate window (C of them) and per random window of the null (R), every route's arrays. Its fields
    change only with ``verdict_statistics``, whose code the verdict stage's cache key hashes."""

    rep: np.ndarray                             # (C,) candidate images holding the window's pattern (RMSE < 0.1)
    exact: np.ndarray                           # (C,) of those, exact copies (RMSE < verdict_exact)
    core_exact: np.ndarray                      # (C,) exact copies of the window's core
    exact_pairs: np.ndarray                     # (C, C) bool: image p holds an exact copy of window t (or core, part)
    part_exact: np.ndarray                      # (C,) exact copies of the window's best part
    part_box: np.ndarray                        # (C, 4) that part
    shift: np.ndarray                           # (C, C) offset of window t's copy in image p, a share of its side
    coh: np.ndarray                             # (C,) coherence
    flip: np.ndarray                            # (C,) in-place flip rate
    null_rep: np.ndarray                        # (R,) the same of the null windows
    null_exact: np.ndarray                      # (R,)
    null_core_exact: np.ndarray                 # (R,)
    null_part_exact: np.ndarray                 # (R,)
    null_shift: np.ndarray                      # (C, R)
    null_coh: np.ndarray                        # (R,)
    null_flip: np.ndarray                       # (R,)
    null_src: np.ndarray                        # (R,) positions of the null windows' images
    null_boxes: np.ndarray                      # (R, 4) the null windows


# the arrays of a Decision over the candidates: not reported in metrics.json
_DECISION_ARRAYS = ("confirmed", "template_core", "template_part")


@dataclass(frozen=True)
class Decision:
    """The verdict's decision (``detect/decision.py``, ``decide``): the numbers metrics.json reports, in its
    order (:meth:`summary`), and three (C,) bool arrays over the candidates: ``confirmed`` (the triggers
    removal uses), ``template_core`` (to match by their core) and ``template_part`` (by their best part)."""

    found: bool
    repeated: int
    repeated_by_core: int
    repeated_by_part: int
    repeated_by_shift: int
    shift_threshold: float
    confirmed_count: int
    templates: int
    learned: bool
    learned_by: List[str]
    min_count: int
    rep_threshold: float
    coherence: float
    coherence_threshold: float
    quantile: float
    null_windows: int
    candidates: int
    flip: float
    flip_threshold: float
    confirmed: np.ndarray
    template_core: np.ndarray
    template_part: np.ndarray

    def summary(self) -> Dict[str, Any]:
        """The reported numbers, as metrics.json's ``verdict`` holds them (less its sentence)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _DECISION_ARRAYS}


@dataclass
class Verdict:
    """The label-free decision (docs/design.md, Verdict): ``found``, its numbers for metrics.json, its
    sentence, the ``templates`` removal uses (None where it does not act) and the statistics it came from."""

    found: bool
    summary: Dict[str, Any]
    text: str
    statistics: VerdictStatistics
    templates: Optional[Templates]
    key: Dict[str, Any]                         # the templates stage's cache key


@dataclass
class Removed:
    """A removal's output: ``removed`` (N,) bool; ``probability`` (N,) where it has one; ``windows`` (N, 4)
    trigger boxes it placed (rows of removed images replace the detector's windows), or None."""

    removed: np.ndarray
    probability: Optional[np.ndarray] = None
    windows: Optional[np.ndarray] = None
