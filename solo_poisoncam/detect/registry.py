"""The detectors (``method``) and removals (``remove``), as registry entries: what each is, its defaults, and
where its code lives (imported on first use, so settings are checked without loading torch code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Callable, Dict, Optional, Union

import numpy as np

from solo_poisoncam.detect.config import PATCHSEARCH_WINDOW
from solo_poisoncam.registry import Registry


def _load(target: str) -> Callable:
    module, name = target.split(":")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class Detector:
    """``localise(ctx) -> Localisation``; ``verdict(ctx, loc) -> Verdict`` where the detector has one."""

    localise_target: str
    default_window: Union[str, float]
    default_removal: str
    verdict_target: Optional[str] = None
    kmeans: Dict[str, Any] = field(default_factory=dict)  # options of cluster.kmeans.kmeans_state

    @property
    def has_verdict(self) -> bool:
        return self.verdict_target is not None

    def localise(self, ctx):
        return _load(self.localise_target)(ctx)

    def verdict(self, ctx, loc):
        return _load(self.verdict_target)(ctx, loc) if self.has_verdict and len(loc.candidates) else None


@dataclass(frozen=True)
class Removal:
    """``remove(ctx, loc, verdict) -> Removed``; ``needs_verdict``: it removes what the verdict's templates match."""

    remove_target: Optional[str]
    needs_verdict: bool = False

    def remove(self, ctx, loc, verdict):
        if self.remove_target is None:
            from solo_poisoncam.detect.handoff import Removed

            return Removed(np.zeros(len(loc.scores), dtype=bool))
        return _load(self.remove_target)(ctx, loc, verdict)


DETECTORS: Registry = Registry("detection method")
REMOVALS: Registry = Registry("removal")

DETECTORS.register("poisoncam")(Detector("solo_poisoncam.detect.poisoncam:localise", "auto", "match",
                                         verdict_target="solo_poisoncam.detect.decision:verdict"))
# PatchSearch: its fixed window and its own k-means (its faiss_kmeans: L2 on the unit features, random
# initialisation, centroids not renormalised)
DETECTORS.register("patchsearch")(Detector("solo_poisoncam.detect.patchsearch:localise", PATCHSEARCH_WINDOW, "classifier",
                                           kmeans={"spherical": False, "init": "random"}))
REMOVALS.register("match")(Removal("solo_poisoncam.detect.match:remove", needs_verdict=True))
REMOVALS.register("probe")(Removal("solo_poisoncam.detect.removal:remove", needs_verdict=True))
REMOVALS.register("classifier")(Removal("solo_poisoncam.detect.classifier:remove"))
REMOVALS.register("none")(Removal(None))
