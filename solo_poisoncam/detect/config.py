"""Every constant of detection in one place (defaults chosen by measurement; see benchmarks/).

Shared settings at the top level; each detector (``poisoncam``, ``patchsearch``) and each removal
(``match``, ``probe``, ``classifier``) has a section of its own. A flat name that belongs to exactly one
section (``refine``, ``verdict_min``, ``test_images_size``) is read as that section's field, so
``--set refine=0`` and ``--set poisoncam.refine=0`` are the same setting.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.detect.classifier import ClassifierConfig
from solo_poisoncam.detect.removal import ProbeConfig
from solo_poisoncam.engine.runner import AMP

# PatchSearch's official window_w: 60 px at 224 (9 px at 32), its default window
PATCHSEARCH_WINDOW = 60 / 224
# fields of the detector's own head fine-tuning, removed for solo-learn's cluster_head (head_checkpoint)
REMOVED = ("head_epochs", "head_steps", "head_lr", "occlusion_area", "occlusion_p", "head_relabel")
# settings that moved: old name -> section.field
RENAMED = {"probe.triggers": "poisoncam.templates"}


@dataclass
class PoisonCamConfig:
    """Cluster activation masking, its score and its verdict (docs/design.md, method and Verdict)."""

    masks: str = "occlusion"                    # occlusion | rise | both
    # sliding occluder sides, shares of the image side, in one mask set: an occluder hides at most its own
    # square, and a model that learned a larger trigger survives the occlusion of a part of it
    occluder: Union[float, List[float]] = field(default_factory=lambda: [0.25, 0.5])
    occluder_stride: float = 0.125
    # coarse to fine: every image under occluders at coarse_stride, then the coarse_top share it ranks
    # highest (at least flip_top images) under the full set; None: one pass, every image under the full set
    coarse_stride: Optional[float] = 0.25
    coarse_top: float = 0.2
    # cluster screen (with the coarse pass): ``screen`` images of each cluster under the coarse occluders
    # rank the clusters by their highest window drop; only the highest-ranked clusters' images, at least
    # ``screen_cover`` of all (and twice flip_top), go on to the coarse pass. 0: every image coarse-masked
    # (chosen on the tuning set: docs/design.md, Evaluation protocol)
    screen: int = 4
    screen_cover: float = 0.05
    num_masks: int = 64                         # RISE masks per image
    rise_grid: int = 8
    rise_p: float = 0.5
    fill: str = "mean"                          # mean | blur | zero
    refine: float = 0.1                         # share of top-scored images whose window is sharpened by exact masking
    refine_tau: float = 0.97                    # smallest side whose drop reaches this share of the best (measured)
    score: str = "drop+flip"                    # drop | flip | drop+flip
    flip_images: int = 100
    flip_top: int = 200                         # candidates re-ranked by the flip test (and tested by the verdict)
    # verdict: is there a trigger at all? (docs/design.md, Verdict)
    null_windows: int = 200                     # random windows of the candidates' sides: the null
    verdict_quantile: float = 0.99
    verdict_margin: float = 0.0
    verdict_min: int = 4
    verdict_ncc: float = 0.9
    verdict_exact: float = 0.02
    verdict_part_exact: float = 0.001
    verdict_shift: float = 0.25
    templates: int = 64                         # at most this many confirmed windows, spread over the ranking
    forced_top: int = 20                        # force_remove with nothing confirmed: the top-scored windows instead

    def __post_init__(self):
        check(self.masks in ("occlusion", "rise", "both"), f"masks must be occlusion, rise or both, got '{self.masks}'")
        check(self.fill in ("mean", "blur", "zero"), f"fill must be mean, blur or zero, got '{self.fill}'")
        check(self.score in ("drop", "flip", "drop+flip"), f"score must be drop, flip or drop+flip, got '{self.score}'")
        check(self.null_windows >= 1 and self.verdict_min >= 1, "null_windows and verdict_min must be >= 1")
        check(0 < self.verdict_quantile <= 1, "verdict_quantile must be in (0, 1]")
        check(0 <= self.verdict_exact < 0.1, "verdict_exact must be in [0, 0.1) (below the repetition RMSE)")
        check(0 <= self.verdict_part_exact <= self.verdict_exact, "verdict_part_exact must be in [0, verdict_exact]")
        check(0 <= self.verdict_shift, "verdict_shift must be >= 0 (a share of the window's side)")
        check(self.flip_images >= 1 and self.flip_top >= 0, "flip_images must be >= 1 and flip_top >= 0")
        check(self.templates >= 1 and self.forced_top >= 1, "templates and forced_top must be >= 1")
        check(self.coarse_stride is None or (isinstance(self.coarse_stride, (int, float)) and 0 < self.coarse_stride < 1),
              f"coarse_stride must be a share of the side in (0, 1), or null for one pass; got {self.coarse_stride!r}")
        check(isinstance(self.coarse_top, (int, float)) and 0 < self.coarse_top <= 1,
              f"coarse_top must be in (0, 1], got {self.coarse_top!r}")
        check(self.screen >= 0, f"screen must be >= 0 (0: no cluster screen), got {self.screen!r}")
        check(isinstance(self.screen_cover, (int, float)) and 0 < self.screen_cover <= 1,
              f"screen_cover must be in (0, 1], got {self.screen_cover!r}")
        sides = self.occluder if isinstance(self.occluder, (list, tuple)) else [self.occluder]
        check(len(sides) > 0 and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in sides),
              f"occluder must be a share of the side in (0, 1] or a list of them, got {self.occluder!r}")
        if isinstance(self.occluder, tuple):
            self.occluder = list(self.occluder)  # as YAML and the cache keys write it
        check(0 <= self.refine <= 1 and 0 < self.refine_tau <= 1, "refine must be in [0, 1] and refine_tau in (0, 1]")


@dataclass
class PatchSearchConfig:
    """PatchSearch's flip set and iterative search, as its official code (detect/patchsearch.py)."""

    test_images_size: int = 1000                # flip set: the size // K images nearest each centroid
    samples_per_iteration: int = 2
    remove_per_iteration: float = 0.25

    def __post_init__(self):
        check(self.test_images_size >= 1, "test_images_size must be >= 1")
        check(0 <= self.remove_per_iteration < 1 and self.samples_per_iteration >= 1,
              "remove_per_iteration must be in [0, 1) (0: no pruning) and samples_per_iteration >= 1")


@dataclass
class MatchConfig:
    """Match removal (detect/match.py): a template matches where NCC > the verdict's and RMSE < ``rmse``."""

    rmse: float = 0.1
    copies: int = 64                            # a template's extent is measured on at most this many matches
    tol: float = 0.1                            # a pixel agrees within this (in [0, 1] units)
    agree: float = 0.5
    # each trigger extent is also looked for resized by these factors, in the images no copy at its own size
    # matched (a trigger pasted at each file's own resolution reaches the model at its own size in each image);
    # 2^(k/4), k = -4..4: half to twice the size in steps of 19%; chosen on the tuning set (docs/design.md,
    # Evaluation protocol); empty: its own size only
    scales: List[float] = field(default_factory=lambda: [0.5, 0.595, 0.707, 0.841, 1.189, 1.414, 1.682, 2.0])

    def __post_init__(self):
        check(0 < self.rmse <= 1 and self.copies >= 1 and 0 < self.tol <= 1 and 0 <= self.agree <= 1,
              "match: rmse and tol must be in (0, 1], copies >= 1, agree in [0, 1]")
        check(all(isinstance(f, (int, float)) and 0 < f <= 4 for f in self.scales),
              f"match.scales must be factors in (0, 4], got {self.scales!r}")
        self.scales = [float(f) for f in self.scales]


SECTIONS = {"poisoncam": PoisonCamConfig, "patchsearch": PatchSearchConfig, "match": MatchConfig,
            "probe": ProbeConfig, "classifier": ClassifierConfig}


@dataclass
class DetectConfig:
    """Settings of one detection run: shared ones here, each detector's and removal's in its section."""

    method: str = "poisoncam"                   # a name in detect.registry.DETECTORS
    # clustering model
    num_clusters: Optional[int] = None          # default 10 x number of classes
    kmeans_iters: int = 20
    kmeans_backend: str = "auto"
    head_temperature: float = 0.1
    # a solo-learn cluster_head checkpoint (the one implementation of head fine-tuning): its clusters and
    # head replace k-means and the k-means head (measured worse on both data sets so far: docs/design.md)
    head_checkpoint: Optional[str] = None
    # candidate window: auto | side in px (>= 1) | share of the side (< 1); None = auto for poisoncam,
    # PatchSearch's fixed 60/224 for patchsearch
    window: Union[str, float, None] = None
    window_range: Tuple[float, float] = (0.1, 0.5)
    # removal: a name in detect.registry.REMOVALS; None = match for poisoncam (measured best:
    # benchmarks/results/trust-*.md), classifier for patchsearch (its paper)
    remove: Optional[str] = None
    force_remove: bool = False                  # remove even when the verdict is "no backdoor found"
    poisoncam: PoisonCamConfig = field(default_factory=PoisonCamConfig)
    patchsearch: PatchSearchConfig = field(default_factory=PatchSearchConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    # execution (no effect on the outputs)
    amp: str = "off"                            # off | bf16 | fp16 autocast (never around Grad-CAM's backward)
    batch_size: int = 256
    forward_batch: int = 4096                   # images per masked forward at 32 px; x (32 / side)^2 at other sides
    feature_batch: int = 512
    seed: int = 0
    gallery: int = 16

    def __post_init__(self):
        from solo_poisoncam.detect.registry import DETECTORS, REMOVALS

        for name, kind in SECTIONS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, kind(**getattr(self, name)))
        detector = DETECTORS.get(self.method)
        if self.window is None:
            self.window = detector.default_window
        if self.remove is None:
            self.remove = detector.default_removal
        removal = REMOVALS.get(self.remove)
        check(not removal.needs_verdict or detector.has_verdict,
              f"remove={self.remove} needs PoisonCAM's verdict; {self.method} has none (PatchSearch removes with its "
              f"classifier or none)")
        check(not removal.needs_verdict or self.poisoncam.flip_top >= 1,
              f"remove={self.remove} removes what the verdict confirms among the flip_top candidates: flip_top must "
              f"be >= 1 (or remove=classifier / none)")
        check(self.amp in AMP, f"amp must be one of {', '.join(AMP)}, got '{self.amp}'")
        check(self.window == "auto" or float(self.window) > 0, f"window must be 'auto' or positive, got {self.window}")
        check(self.num_clusters is None or self.num_clusters >= 1, "num_clusters must be >= 1")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "DetectConfig":
        """A config from nested sections and/or flat names (a flat name that belongs to one section is
        that section's field, and overrides the section's value)."""
        d = {k: (dict(v) if k in SECTIONS and isinstance(v, dict) else v) for k, v in d.items()}
        gone = sorted(set(d) & set(REMOVED))
        check(not gone, f"detection settings {gone} were removed: the detector uses the k-means head; to fine-tune "
                        "one, train solo-learn's method=cluster_head and pass head_checkpoint=<its checkpoint>")
        for old, new in RENAMED.items():
            section, name = old.split(".")
            if isinstance(d.get(section), dict) and name in d[section]:
                to_section, to_name = new.split(".")
                d.setdefault(to_section, {})[to_name] = d[section].pop(name)
        names = {f.name for f in dataclasses.fields(cls)}
        owner = flat_owners()
        for key in [k for k in d if k not in names and k in owner]:
            d.setdefault(owner[key], {})[key] = d.pop(key)
        unknown = set(d) - names
        check(not unknown, f"unknown detection settings {sorted(unknown)}; valid: {sorted(names | set(owner))}")
        _check_types(cls, d)
        for section, kind in SECTIONS.items():
            if isinstance(d.get(section), dict):
                valid = {f.name for f in dataclasses.fields(kind)}
                bad = set(d[section]) - valid
                check(not bad, f"unknown {section} settings {sorted(bad)}; valid: {sorted(valid)}")
                _check_types(kind, d[section], f"{section}.")
        if d.get("window_range") is not None:
            d["window_range"] = tuple(d["window_range"])
        return cls(**d)


def _matches(value: Any, hint: Any) -> bool:
    """Is ``value`` (as YAML or ``--set`` gives it) of the annotated type? Whole numbers pass as floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return all(_matches(v, inner[0]) for v in value) if inner else True
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint) or dataclasses.is_dataclass(hint) and isinstance(value, dict)
    return True


def _check_types(kind, d: Dict[str, Any], prefix: str = "") -> None:
    """One line naming the setting, its value and the type it needs, before any work starts."""
    hints = typing.get_type_hints(kind)
    for name, value in d.items():
        hint = hints.get(name)
        if hint is not None and not _matches(value, hint):
            raise PoisonCamError(f"detection setting {prefix}{name}={value!r} must be {_describe(hint)}")


def _describe(hint: Any) -> str:
    """A type annotation in words: 'a number or null', 'a whole number', 'a list of numbers'."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Union:
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        return f"a list of {_describe(args[0])}s".replace("a list of a ", "a list of ") if args else "a list"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a number",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def flat_owners() -> Dict[str, str]:
    """Section field name -> its section, for the names that belong to exactly one section."""
    seen: Dict[str, List[str]] = {}
    for section, kind in SECTIONS.items():
        for f in dataclasses.fields(kind):
            seen.setdefault(f.name, []).append(section)
    top = {f.name for f in dataclasses.fields(DetectConfig)}
    return {name: s[0] for name, s in seen.items() if len(s) == 1 and name not in top}
