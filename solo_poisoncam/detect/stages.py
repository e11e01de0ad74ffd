"""The detection stages, each declared once: the settings and the code its result depends on, from
which its cache key is derived (docs/design.md, Stage graph and cache keys).

A stage's key holds every earlier stage's key, a hash of its code (the modules it names and every
module of this package they import, read from the source files this process runs) and the values of
its declared settings (``poisoncam.*``: all fields of that section). Nothing else reaches the key,
so a setting a stage reads must be declared: ``tests/detect/test_stages.py`` changes each declared
setting and sees its key change, and checks that every setting is declared or named in
:data:`NO_EFFECT`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional, Tuple

from solo_poisoncam import __version__

_ROOT = Path(__file__).resolve().parent.parent
# modules that carry settings and plumbing, not computation: the declared settings stand for them
_PLUMBING = frozenset({"solo_poisoncam.detect.config", "solo_poisoncam.detect.registry", "solo_poisoncam.detect.stages",
                       "solo_poisoncam.detect.pipeline", "solo_poisoncam.detect.outputs", "solo_poisoncam.detect.handoff",
                       "solo_poisoncam.timing",
                       "solo_poisoncam.engine.cache", "solo_poisoncam.checks", "solo_poisoncam.io",
                       "solo_poisoncam.registry"})
# DetectConfig settings that change how a result is computed but not the result
NO_EFFECT = frozenset({"batch_size", "forward_batch", "feature_batch", "gallery", "method", "remove"})


@dataclass(frozen=True)
class Stage:
    """A cached stage: its ``name`` (the cache file's prefix), the ``modules`` whose code computes it and
    the DetectConfig ``settings`` it reads (``section.field``, or ``section.*``)."""

    name: str
    modules: Tuple[str, ...]
    settings: Tuple[str, ...] = ()

    def fields(self) -> Tuple[str, ...]:
        """The declared settings, with ``section.*`` spelled out."""
        from solo_poisoncam.detect.config import SECTIONS

        out = []
        for s in self.settings:
            if s.endswith(".*"):
                section = s[:-2]
                out += [f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section])]
            else:
                out.append(s)
        return tuple(out)

    def key(self, cfg, upstream: Mapping[str, Any], **inputs: Any) -> Dict[str, Any]:
        """``upstream`` (the key of the stage before) plus this stage's code version, declared settings
        and ``inputs`` (values that do not come from the config: the checkpoint, the data, K, ...)."""
        return {**upstream, self.name: {"v": code_version(self.name), **{f: setting(cfg, f) for f in self.fields()},
                                        **inputs}}


def setting(cfg, name: str) -> Any:
    """The value of ``name`` (``field`` or ``section.field``) in ``cfg``, lists for tuples (as YAML writes them)."""
    value = cfg
    for part in name.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


_MASKING = ("window", "window_range", "poisoncam.masks", "poisoncam.occluder", "poisoncam.num_masks",
            "poisoncam.rise_grid", "poisoncam.rise_p", "poisoncam.fill", "poisoncam.coarse_stride")
_DECISION = ("force_remove", "poisoncam.verdict_min", "poisoncam.verdict_margin", "poisoncam.verdict_quantile",
             "poisoncam.verdict_shift", "poisoncam.templates", "poisoncam.forced_top")

STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("features", ("solo_poisoncam.engine.features", "solo_poisoncam.models.threat_model"), ("amp",)),
    Stage("kmeans", ("solo_poisoncam.cluster.kmeans",), ("num_clusters", "kmeans_iters", "kmeans_backend", "seed")),
    Stage("head", ("solo_poisoncam.cluster.head", "solo_poisoncam.detect.cam"), ("head_temperature", "head_checkpoint")),
    # PoisonCAM: the coarse pass, every image; the full mask set on the images it ranks highest
    Stage("screen", ("solo_poisoncam.detect.poisoncam",), _MASKING + ("poisoncam.screen",)),
    Stage("cam-coarse", ("solo_poisoncam.detect.poisoncam",), _MASKING + ("poisoncam.screen", "poisoncam.screen_cover",
                                                                   "poisoncam.flip_top")),
    Stage("cam", ("solo_poisoncam.detect.poisoncam",),
          _MASKING + ("poisoncam.occluder_stride", "poisoncam.coarse_top", "poisoncam.flip_top", "poisoncam.screen",
                      "poisoncam.screen_cover")),
    Stage("refine", ("solo_poisoncam.detect.poisoncam",), ("poisoncam.refine", "poisoncam.refine_tau")),
    Stage("flip", ("solo_poisoncam.detect.poisoncam",), ("poisoncam.flip_images", "poisoncam.flip_top", "poisoncam.score")),
    Stage("verdict", ("solo_poisoncam.detect.verdict",),
          ("poisoncam.null_windows", "poisoncam.verdict_ncc", "poisoncam.verdict_exact", "poisoncam.verdict_part_exact")),
    # the verdict's decision and templates: computed on every run from the cached statistics
    Stage("templates", ("solo_poisoncam.detect.decision",), _DECISION),
    # PatchSearch
    Stage("gradcam", ("solo_poisoncam.detect.patchsearch",), ("window", "window_range")),
    Stage("search", ("solo_poisoncam.detect.patchsearch",), ("patchsearch.*",)),
    # removals
    Stage("match", ("solo_poisoncam.detect.match",), ("match.*",)),
    Stage("probe", ("solo_poisoncam.detect.removal",), ("probe.*",)),
    Stage("classifier", ("solo_poisoncam.detect.classifier",), ("classifier.*",)),
)}


def stage(name: str) -> Stage:
    return STAGES[name]


def _module_file(module: str) -> Optional[Path]:
    """The source file of package module ``module`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``); None: no such module."""
    rel = Path(*module.split(".")[1:])
    for path in (_ROOT / f"{rel}.py", _ROOT / rel / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _source(module: str) -> bytes:  # read once per process: the code this process runs
    return _module_file(module).read_bytes()


def _imports(module: str) -> FrozenSet[str]:
    """The package modules ``module`` imports (statically, at any level)."""
    out = set()
    package = module if _module_file(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(_source(module))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        out.update(n for n in names if n.startswith("solo_poisoncam.") and _module_file(n) is not None)
    return frozenset(out)


def closure(modules: Iterable[str]) -> Tuple[str, ...]:
    """``modules`` and every package module they import, transitively, less the plumbing."""
    seen, todo = set(), [m for m in modules]
    while todo:
        m = todo.pop()
        if m in seen or m in _PLUMBING:
            continue
        seen.add(m)
        todo.extend(_imports(m))
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def code_version(*names: str) -> str:
    """A hash of the package version and the code of the given stages (all stages if none)."""
    h = hashlib.sha256(__version__.encode())
    for module in closure(m for n in (names or tuple(STAGES)) for m in STAGES[n].modules):
        h.update(module.encode() + b"\0" + _source(module))
    return h.hexdigest()[:16]
