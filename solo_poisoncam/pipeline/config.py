"""Run configs (YAML, OmegaConf): the embedded demo default, ``--quick`` and ``key=value`` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from solo_poisoncam.checks import PoisonCamError, check, check_number

SECTIONS = ("name", "seed", "data", "poison", "pretrain", "detect", "retrain", "reference", "eval", "quick")
# poison keys of a written folder (poison.write_folder: true; poison/folder.py), the CLI's --write-folder
# flags: the trigger's pixel width, the JPEG quality of every file, the patched validation side
WRITE_FOLDER_KEYS = ("width", "quality", "val_size")


def default_config_path() -> Path:
    return Path(str(resources.files("solo_poisoncam") / "conf" / "run" / "demo.yaml"))


def load_run_config(path: Optional[str] = None, overrides: Sequence[str] = (), quick: bool = False) -> Dict[str, Any]:
    """The run config: ``path`` (default: the embedded demo) over the demo defaults, then ``quick``,
    then ``overrides`` (``a.b=value``)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given = {o.split("=", 1)[0][len("poison."):].split(".")[0] for o in overrides if o.startswith("poison.")}
    try:
        cfg = OmegaConf.load(default_config_path())
        if path is not None:
            check(Path(path).is_file(), f"run config '{path}' does not exist")
            user = OmegaConf.load(path)
            unknown = set(user.keys()) - set(SECTIONS)
            check(not unknown, f"unknown sections {sorted(unknown)} in '{path}'; valid: {', '.join(SECTIONS)}")
            cfg = OmegaConf.merge(cfg, user)
            given |= set(user.get("poison") or {})
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
    check_write_folder(out, given)
    return out


def check_write_folder(cfg: Dict[str, Any], given: Sequence[str] = ()) -> None:
    """``poison.write_folder: true`` (the chain writes a poisoned copy of the image folder ``data.root`` the way
    SSL-Backdoor's generator does, ``poison/folder.py``) takes the keys ``poisoncam poison --write-folder`` takes;
    every other combination is refused here, in one error, before any work. ``given``: the poison keys the
    user's config file and overrides set (``poison.size`` is also the embedded default's)."""
    p, data = cfg["poison"], cfg["data"]
    if not p.get("write_folder", False):
        extra = sorted(set(WRITE_FOLDER_KEYS) & set(p))
        check(not extra, f"{', '.join('poison.' + k for k in extra)} apply only with poison.write_folder: true")
        return
    check(p["write_folder"] is True, f"poison.write_folder must be true or false, got {p['write_folder']!r}")
    check(data.get("dataset") == "folder" and data.get("root"),
          "poison.write_folder: true writes a poisoned copy of an image folder: it needs data.dataset: folder and "
          f"data.root: SRC (got data.dataset: {data.get('dataset')})")
    supported = {"write_folder", "attack", "trigger", "target", "rate", "rate_of", "targeted", *WRITE_FOLDER_KEYS}
    unused = [f"poison.{k}" for k in sorted((set(given) | set(p)) - supported - {"size"})]
    unused += [f"poison.{k}: {p[k]}" for k, ok in (("attack", "patch"), ("rate_of", "target"), ("targeted", True))
               if k in p and p[k] != ok]
    if "size" in given:
        unused.append("poison.size (the trigger's width is poison.width, in pixels)")
    if data.get("num_samples") is not None:
        unused.append(f"data.num_samples: {data['num_samples']} (every image of the folder is written: set it to null)")
    check(not unused, "poison.write_folder writes SSL-Backdoor's targeted opaque patch (poison.width px, every file "
                      f"JPEG at poison.quality) over every image of data.root; {'; '.join(unused)} do(es) not apply")
    for key in WRITE_FOLDER_KEYS:
        if p.get(key) is not None:
            check_number(p[key], f"poison.{key}", whole=True)
            check(p[key] >= 1 and (key != "quality" or p[key] <= 95),
                  f"poison.{key} must be {'in [1, 95]' if key == 'quality' else '>= 1 px'}, got {p[key]}")
