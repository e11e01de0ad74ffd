"""Every constant of detection in one place (defaults chosen by measurement; see benchmarks/)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from solo_poisoncam.checks import check
from solo_poisoncam.detect.classifier import ClassifierConfig
from solo_poisoncam.detect.removal import ProbeConfig
from solo_poisoncam.engine.runner import AMP

METHODS = ("poisoncam", "patchsearch")
REMOVALS = ("probe", "match", "classifier", "none")
# PatchSearch's official window_w: 60 px at 224 (9 px at 32), its default window
PATCHSEARCH_WINDOW = 60 / 224
# fields of the detector's own head fine-tuning, removed for solo-learn's cluster_head (head_checkpoint)
REMOVED = ("head_epochs", "head_steps", "head_lr", "occlusion_area", "occlusion_p", "head_relabel")


@dataclass
class DetectConfig:
    """Settings of one detection run. PoisonCAM and PatchSearch share all but the localisation and search."""

    method: str = "poisoncam"
    # clustering model
    num_clusters: Optional[int] = None          # default 10 x number of classes
    kmeans_iters: int = 20
    kmeans_backend: str = "auto"
    head_temperature: float = 0.1
    # a solo-learn cluster_head checkpoint (the one implementation of head fine-tuning): its clusters and
    # head replace k-means and the k-means head (measured worse on both data sets so far: docs/design.md)
    head_checkpoint: Optional[str] = None
    # cluster activation masking (PoisonCAM)
    masks: str = "occlusion"                    # occlusion | rise | both
    # sliding occluder side, share of the image side; a list: occluders of each side in one mask set.
    # Both 1/4 and 1/2: an occluder hides at most its own square, and a model that learned a larger
    # trigger survives the occlusion of a part of it (docs/design.md, method step 3)
    occluder: Union[float, List[float]] = field(default_factory=lambda: [0.25, 0.5])
    occluder_stride: float = 0.125
    # coarse to fine: every image under occluders at coarse_stride, then the coarse_top share it ranks
    # highest (at least flip_top images) under the full set; None: one pass, every image under the full set
    coarse_stride: Optional[float] = 0.25
    coarse_top: float = 0.2
    num_masks: int = 64                         # RISE masks per image
    rise_grid: int = 8
    rise_p: float = 0.5
    fill: str = "mean"                          # mean | blur | zero
    # candidate window (both methods)
    # auto | side in px (>= 1) | share of the side (< 1); None = auto for poisoncam, PatchSearch's fixed 60/224
    window: Union[str, float, None] = None
    window_range: Tuple[float, float] = (0.1, 0.5)
    refine: float = 0.1                         # share of top-scored images whose window is sharpened by exact masking
    refine_tau: float = 0.97                    # smallest side whose drop reaches this share of the best (measured)
    # poison score
    score: str = "drop+flip"                    # poisoncam: drop | flip | drop+flip
    flip_images: int = 100
    flip_top: int = 200                         # poisoncam: candidates re-ranked by the flip test
    test_images_size: int = 1000                # patchsearch: flip set, the size // K images nearest each centroid
    samples_per_iteration: int = 2              # patchsearch search
    remove_per_iteration: float = 0.25
    # verdict (PoisonCAM): is there a trigger at all? (detect/verdict.py)
    null_windows: int = 200                     # random windows of the candidates' sides: the null
    verdict_quantile: float = 0.99              # candidates must beat this quantile of the null ...
    verdict_margin: float = 0.0                 # ... plus this margin ...
    verdict_min: int = 4                        # ... and at least this many of them (docs/design.md, Verdict)
    verdict_ncc: float = 0.9                    # a window's pattern "repeats" in an image above this correlation ...
    verdict_exact: float = 0.02                 # ... and one of its copies is exact: RMSE below this (pasted pixels)
    verdict_part_exact: float = 0.001           # a part's copies: identical pixels (trigger copies 0-0.0004 RMSE, natural >= 0.002)
    verdict_shift: float = 0.25                 # no exact copies: lossy ones count this share of the side away from the window
    force_remove: bool = False                  # remove even when the verdict is "no backdoor found"
    # removal: probe (frozen-feature probe) | match (confirmed trigger patterns) | classifier (CNN ensemble) | none;
    # None = match for poisoncam (measured best: benchmarks/results/trust-*.md), classifier for patchsearch (its paper)
    remove: Optional[str] = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    # execution
    amp: str = "off"                            # off | bf16 | fp16 autocast (never around Grad-CAM's backward)
    batch_size: int = 256
    forward_batch: int = 4096
    feature_batch: int = 512
    seed: int = 0
    gallery: int = 16

    def __post_init__(self):
        if isinstance(self.classifier, dict):
            self.classifier = ClassifierConfig(**self.classifier)
        if isinstance(self.probe, dict):
            self.probe = ProbeConfig(**self.probe)
        if self.window is None:
            self.window = "auto" if self.method == "poisoncam" else PATCHSEARCH_WINDOW
        if self.remove is None:
            self.remove = "match" if self.method == "poisoncam" else "classifier"
        check(self.method in METHODS, f"unknown detection method '{self.method}'; choose one of {', '.join(METHODS)}")
        check(self.masks in ("occlusion", "rise", "both"), f"masks must be occlusion, rise or both, got '{self.masks}'")
        check(self.fill in ("mean", "blur", "zero"), f"fill must be mean, blur or zero, got '{self.fill}'")
        check(self.score in ("drop", "flip", "drop+flip"), f"score must be drop, flip or drop+flip, got '{self.score}'")
        check(self.remove in REMOVALS, f"remove must be one of {', '.join(REMOVALS)}, got '{self.remove}'")
        check(self.method == "poisoncam" or self.remove in ("classifier", "none"),
              f"remove={self.remove} needs PoisonCAM's verdict; PatchSearch removes with its classifier or none")
        check(self.amp in AMP, f"amp must be one of {', '.join(AMP)}, got '{self.amp}'")
        check(self.null_windows >= 1 and self.verdict_min >= 1, "null_windows and verdict_min must be >= 1")
        check(0 < self.verdict_quantile <= 1, "verdict_quantile must be in (0, 1]")
        check(0 <= self.verdict_exact < 0.1, "verdict_exact must be in [0, 0.1) (below the repetition RMSE)")
        check(0 <= self.verdict_part_exact <= self.verdict_exact, "verdict_part_exact must be in [0, verdict_exact]")
        check(0 <= self.verdict_shift, "verdict_shift must be >= 0 (a share of the window's side)")
        check(self.window == "auto" or float(self.window) > 0, f"window must be 'auto' or positive, got {self.window}")
        check(self.num_clusters is None or self.num_clusters >= 1, "num_clusters must be >= 1")
        check(self.flip_images >= 1 and self.flip_top >= 0, "flip_images must be >= 1 and flip_top >= 0")
        check(self.test_images_size >= 1, "test_images_size must be >= 1")
        check(0 <= self.remove_per_iteration < 1 and self.samples_per_iteration >= 1,
              "remove_per_iteration must be in [0, 1) (0: no pruning) and samples_per_iteration >= 1")
        check(self.coarse_stride is None or (isinstance(self.coarse_stride, (int, float)) and 0 < self.coarse_stride < 1),
              f"coarse_stride must be a share of the side in (0, 1), or null for one pass; got {self.coarse_stride!r}")
        check(isinstance(self.coarse_top, (int, float)) and 0 < self.coarse_top <= 1,
              f"coarse_top must be in (0, 1], got {self.coarse_top!r}")
        sides = self.occluder if isinstance(self.occluder, (list, tuple)) else [self.occluder]
        check(len(sides) > 0 and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in sides),
              f"occluder must be a share of the side in (0, 1] or a list of them, got {self.occluder!r}")
        if isinstance(self.occluder, tuple):
            self.occluder = list(self.occluder)  # as YAML and the cache keys write it
        check(0 <= self.refine <= 1 and 0 < self.refine_tau <= 1, "refine must be in [0, 1] and refine_tau in (0, 1]")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DetectConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        gone = sorted(set(d) & set(REMOVED))
        check(not gone, f"detection settings {gone} were removed: the detector uses the k-means head; to fine-tune "
                        "one, train solo-learn's method=cluster_head and pass head_checkpoint=<its checkpoint>")
        unknown = set(d) - names
        check(not unknown, f"unknown detection settings {sorted(unknown)}; valid: {sorted(names)}")
        d = dict(d)
        for key in ("window_range",):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        return cls(**d)
