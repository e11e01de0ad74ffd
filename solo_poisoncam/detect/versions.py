"""Source versions of the cached stages: a code change never reuses a stale cache, and a change to
one stage's code does not throw away the others' (docs/design.md, Stage graph and cache keys)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from solo_poisoncam import __version__

_ROOT = Path(__file__).resolve().parent.parent

# stage -> the modules whose code computes it (a later stage's key also holds every earlier stage's)
STAGE_SOURCES = {
    "features": ("engine/features.py", "data/indexed.py", "models/threat_model.py", "models/backbones.py"),
    "kmeans": ("cluster",),
    "head": ("models/heads.py", "detect/cam.py"),
    "cam": ("detect/poisoncam.py", "detect/window.py", "ops"),
    "flip": ("detect/flip.py",),
    "gradcam": ("detect/patchsearch.py", "detect/window.py"),
    "search": ("detect/flip.py",),
    "verdict": ("detect/verdict.py", "detect/flip.py"),
    "classifier": ("detect/classifier.py", "ssl/augment.py"),
    "probe": ("detect/removal.py", "detect/match.py", "detect/decision.py", "detect/pipeline.py"),
}


def _read_sources():
    out = {}
    for entry in sorted({e for entries in STAGE_SOURCES.values() for e in entries}):
        path = _ROOT / entry
        out[entry] = b"".join(f.relative_to(_ROOT).as_posix().encode() + b"\0" + f.read_bytes()
                              for f in (sorted(path.glob("*.py")) if path.is_dir() else [path]))
    return out


# read once, at import (the code this process runs), not when a stage first asks
_SOURCES = _read_sources()


@lru_cache(maxsize=None)
def stage_version(*stages: str) -> str:
    """A hash of the package version and the source of the given stages' modules (all stages if none)."""
    h = hashlib.sha256(__version__.encode())
    for entry in sorted({e for s in (stages or tuple(STAGE_SOURCES)) for e in STAGE_SOURCES[s]}):
        h.update(_SOURCES[entry])
    return h.hexdigest()[:16]
