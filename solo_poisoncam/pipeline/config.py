"""Run configs (YAML, OmegaConf): the embedded demo default, ``--quick`` and ``key=value`` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from solo_poisoncam.checks import PoisonCamError, check

SECTIONS = ("name", "seed", "data", "poison", "pretrain", "detect", "retrain", "reference", "eval", "quick")


def default_config_path() -> Path:
    return Path(str(resources.files("solo_poisoncam") / "conf" / "run" / "demo.yaml"))


def load_run_config(path: Optional[str] = None, overrides: Sequence[str] = (), quick: bool = False) -> Dict[str, Any]:
    """The run config: ``path`` (default: the embedded demo) over the demo defaults, then ``quick``,
    then ``overrides`` (``a.b=value``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(default_config_path())
        if path is not None:
            check(Path(path).is_file(), f"run config '{path}' does not exist")
            user = OmegaConf.load(path)
            unknown = set(user.keys()) - set(SECTIONS)
            check(not unknown, f"unknown sections {sorted(unknown)} in '{path}'; valid: {', '.join(SECTIONS)}")
            cfg = OmegaConf.merge(cfg, user)
        if quick:
            cfg = OmegaConf.merge(cfg, cfg.quick)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # a ??? the user must fill
    except OmegaConfBaseException as e:
        raise PoisonCamError(f"bad run config: {e}") from e
    out.pop("quick", None)
    out["quick"] = bool(quick)
    check(set(out["detect"]["methods"]) <= {"poisoncam", "patchsearch"},
          f"detect.methods must be among poisoncam, patchsearch; got {out['detect']['methods']}")
    return out
