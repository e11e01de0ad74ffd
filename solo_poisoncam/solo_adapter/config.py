"""``poison.*`` and ``detect.*`` config groups: defaults and checks, solo-learn style
(``add_and_assert_*(cfg) -> cfg``), run right after solo's own ``parse_cfg``.

Bad settings raise :class:`PoisonCamError` naming the key (never ``assert``: it vanishes under ``-O``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf

from solo_poisoncam.checks import PoisonCamError, check, check_rate

# keys of ``detect.*`` that belong to the adapter, not to DetectConfig
DETECT_ADAPTER_KEYS = ("enabled", "dir", "cache", "device", "progress")
POISON_DEFAULTS: Dict[str, Any] = {
    "enabled": True,
    "attack": {"name": "patch"},
    "target": 0,
    "rate": 0.5,
    "rate_of": "target",
    "targeted": True,
    "seed": 0,
    "manifest": None,
}


def _select(cfg: DictConfig, key: str, default: Any) -> Any:
    # solo's omegaconf_select: OmegaConf.select, with the yaml string "None" read as None
    value = OmegaConf.select(cfg, key, default=default)
    return None if value == "None" else value


def poison_enabled(cfg: DictConfig) -> bool:
    return bool(_select(cfg, "poison.enabled", False))


def detect_enabled(cfg: DictConfig) -> bool:
    return bool(_select(cfg, "detect.enabled", False))


def attack_config(cfg: DictConfig) -> Dict[str, Any]:
    """``poison.attack`` as a plain dict for :func:`build_attack` (a bare string is the attack name)."""
    attack = cfg.poison.attack
    if isinstance(attack, str):
        return {"name": attack}
    return OmegaConf.to_container(attack, resolve=True)


def add_and_assert_poison_cfg(cfg: DictConfig) -> DictConfig:
    """Fill ``poison.*`` defaults and check them. A run without a ``poison`` node is left untouched.

    Giving any ``poison`` node (``+poison=patch`` or ``+poison.rate=0.1``) turns poisoning on
    unless ``poison.enabled=False``.
    """
    if _select(cfg, "poison", None) is None:
        return cfg
    for key, default in POISON_DEFAULTS.items():
        cfg.poison[key] = _select(cfg, f"poison.{key}", default)
    if not cfg.poison.enabled:
        return cfg

    from solo_poisoncam.poison.attacks import build_attack

    if cfg.poison.manifest:
        _from_manifest(cfg)
    build_attack(attack_config(cfg))  # unknown attack or bad kwargs: PoisonCamError naming them
    check_rate(cfg.poison.rate, "poison.rate")
    check(cfg.poison.rate_of in ("target", "all"),
          f"poison.rate_of must be 'target' (a fraction of the target class) or 'all', got '{cfg.poison.rate_of}'")
    check(cfg.poison.targeted or cfg.poison.rate_of == "all",
          "poison.rate_of=target needs poison.targeted=True; untargeted poisoning takes poison.rate_of=all")
    if cfg.data.format == "dali":
        raise PoisonCamError(
            "poisoning needs solo-learn's PyTorch data pipeline, but data.format=dali: DALI reads and decodes the "
            "files itself on the GPU, so the poison wrapper cannot touch the images. Use data.format=image_folder "
            "(or h5).")
    if cfg.data.no_labels:
        check(not cfg.poison.targeted and cfg.poison.rate_of == "all",
              "data.no_labels=True: every label is -1, so there is no target class to poison; unlabelled data "
              "supports only untargeted poisoning (rate_of=all): set poison.targeted=False poison.rate_of=all")
    else:
        target = cfg.poison.target
        check(isinstance(target, int) and 0 <= target < cfg.data.num_classes,
              f"poison.target={target} does not exist: data.num_classes is {cfg.data.num_classes} "
              f"(classes 0..{cfg.data.num_classes - 1})")
    if _select(cfg, "auto_resume.enabled", False):
        warnings.warn(
            "auto_resume.enabled=True with poisoning: solo-learn's AutoResumer matches checkpoints on name, method, "
            "optimizer and data set but not on poison.*, so it can pick up a clean or differently poisoned run. "
            "solo-poisoncam refuses a resume whose recorded poisons differ, but the safe settings are "
            "auto_resume.enabled=False or a `name` that encodes the poison settings.", UserWarning, stacklevel=2)
    return cfg


def _from_manifest(cfg: DictConfig):
    """``poison.manifest`` fixes the poisons: ``poison.*`` take its values (so ``args.json`` records what the
    data hold). A written folder's manifest (``poisoncam poison --write-folder``) pastes nothing, its files
    hold the poisons; the dataset wrapper checks that ``data.train_path`` is that folder's ``train/``."""
    from solo_poisoncam.poison.manifest import PoisonManifest

    m = PoisonManifest.load(cfg.poison.manifest)
    cfg.poison.attack = OmegaConf.create(m.attack)
    for key in ("target", "rate", "rate_of", "targeted", "seed"):
        cfg.poison[key] = getattr(m, key)
    if not m.in_files:
        return
    check(cfg.data.format == "image_folder" and cfg.data.dataset in ("custom", "imagenet", "imagenet100")
          and not cfg.data.no_labels,
          f"poison.manifest='{cfg.poison.manifest}' is a written folder's (poisoncam poison --write-folder): "
          "solo-learn must read that folder as a labelled ImageFolder (data.format=image_folder, data.dataset="
          f"custom, imagenet or imagenet100, data.no_labels=False; got data.format={cfg.data.format}, "
          f"data.dataset={cfg.data.dataset}, data.no_labels={cfg.data.no_labels})")
    fraction = _select(cfg, "data.fraction", -1)
    check(not (fraction and 0 < float(fraction) < 1),
          f"poison.manifest='{cfg.poison.manifest}' is a written folder's: it covers every training file, "
          f"and data.fraction={fraction} trains on a subset; leave data.fraction at -1")


def add_and_assert_detect_cfg(cfg: DictConfig) -> DictConfig:
    """Fill ``detect.*`` (the adapter keys plus any :class:`DetectConfig` field) and check them."""
    if _select(cfg, "detect", None) is None:
        return cfg
    cfg.detect.enabled = _select(cfg, "detect.enabled", True)
    cfg.detect.dir = _select(cfg, "detect.dir", None)  # default: <checkpoint dir>/detect-<detect.method>
    cfg.detect.cache = _select(cfg, "detect.cache", True)
    cfg.detect.device = _select(cfg, "detect.device", None)  # default: the LightningModule's device
    cfg.detect.progress = _select(cfg, "detect.progress", True)
    if not cfg.detect.enabled:
        return cfg
    dcfg = detect_config(cfg)
    for f in dataclasses.fields(dcfg):  # store the resolved defaults, so args.json says what ran
        if f.name not in cfg.detect:
            value = getattr(dcfg, f.name)
            cfg.detect[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else (
                list(value) if isinstance(value, tuple) else value)
    check(cfg.data.format != "dali",
          "detection reads the training images through solo-learn's PyTorch dataset, but data.format=dali; "
          "use data.format=image_folder (or h5)")
    if dcfg.method == "patchsearch":
        check(str(cfg.backbone.name).startswith(("resnet", "wide_resnet")),
              f"detect.method=patchsearch needs a Grad-CAM layer, known for resnet / wide_resnet backbones only; "
              f"backbone.name={cfg.backbone.name}: use detect.method=poisoncam")
    return cfg


def detect_config(cfg: DictConfig):
    """The :class:`DetectConfig` of ``cfg.detect`` (adapter keys dropped)."""
    from solo_poisoncam.detect.config import DetectConfig

    d = OmegaConf.to_container(cfg.detect, resolve=True)
    d = {k: (None if v == "None" else v) for k, v in d.items() if k not in DETECT_ADAPTER_KEYS}
    return DetectConfig.from_dict(d)


__all__ = ["add_and_assert_poison_cfg", "add_and_assert_detect_cfg", "detect_config", "poison_enabled",
           "detect_enabled", "attack_config", "DETECT_ADAPTER_KEYS"]
