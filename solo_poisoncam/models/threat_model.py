"""Load a threat-model backbone from a built-in or solo-learn checkpoint (``args.json`` beside it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.io import PathLike, read_json
from solo_poisoncam.models.backbones import BACKBONES, create_backbone

# solo-learn's normalisation tables (solo/data/pretrain_dataloader.py, MEANS_N_STD)
SOLO_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "imagenet100": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
IMAGENET_MEAN_STD = SOLO_MEAN_STD["imagenet"]


class ThreatModel(nn.Module):
    """A frozen SSL backbone that takes images in [0, 1] (B, 3, H, W) and returns features (B, D)."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], config: Dict[str, Any],
                 checkpoint: str = ""):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.config = config
        self.checkpoint = checkpoint
        self.num_features = backbone.num_features

    @property
    def feature_layer(self) -> nn.Module:
        return self.backbone.feature_layer

    @property
    def image_size(self) -> Optional[int]:
        return run_image_size(self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def find_run_config(ckpt: PathLike) -> Path:
    """``args.json`` beside the checkpoint (solo-learn and built-in layout) or one folder up."""
    ckpt = Path(ckpt)
    for d in (ckpt.parent, ckpt.parent.parent):
        if (d / "args.json").is_file():
            return d / "args.json"
    raise PoisonCamError(f"no args.json beside checkpoint '{ckpt}': it says which backbone the weights belong to")


def check_checkpoint_file(ckpt: PathLike) -> None:
    """``ckpt`` exists and is a PyTorch checkpoint file (a zip archive, or a legacy pickle), by its first bytes."""
    path = Path(ckpt)
    check(path.exists(), f"checkpoint '{ckpt}' does not exist")
    check(path.is_file(), f"checkpoint '{ckpt}' is a directory; give the .ckpt file inside it")
    with open(path, "rb") as f:
        head = f.read(4)
    check(head == b"PK\x03\x04" or head[:1] == b"\x80",
          f"'{ckpt}' is not a checkpoint (not a file written by torch.save); give the .ckpt file of a "
          "`poisoncam pretrain` or solo-learn run")


def read_run_config(ckpt: PathLike) -> Dict[str, Any]:
    check_checkpoint_file(ckpt)
    return read_json(find_run_config(ckpt))


def run_mean_std(cfg: Dict[str, Any]) -> Tuple[Sequence[float], Sequence[float]]:
    data = cfg.get("data", {})
    if "mean" in data and "std" in data:
        return data["mean"], data["std"]
    augs = cfg.get("augmentations") or []
    if augs and isinstance(augs, list) and "mean" in augs[0] and "std" in augs[0]:
        return augs[0]["mean"], augs[0]["std"]
    return SOLO_MEAN_STD.get(data.get("dataset", ""), IMAGENET_MEAN_STD)


def run_image_size(cfg: Dict[str, Any]) -> Optional[int]:
    if "image_size" in cfg.get("data", {}):
        return int(cfg["data"]["image_size"])
    augs = cfg.get("augmentations") or []
    if augs and isinstance(augs, list) and "crop_size" in augs[0]:
        return int(augs[0]["crop_size"])
    return None


def build_run_backbone(cfg: Dict[str, Any]) -> nn.Module:
    """The backbone of a run config, built the way its trainer built it (solo's CIFAR-stem rule included)."""
    bb = cfg.get("backbone", {})
    name = bb.get("name")
    check(name is not None, "run config has no backbone.name")
    kwargs = dict(bb.get("kwargs") or {})
    if name.startswith("resnet") and cfg.get("backend") != "builtin":
        # solo-learn swaps in the CIFAR stem by dataset name (solo/methods/base.py)
        kwargs.setdefault("cifar_stem", cfg.get("data", {}).get("dataset") in ("cifar10", "cifar100"))
    if name in BACKBONES:
        return create_backbone(name, **kwargs)
    try:
        from solo.methods.base import BaseMethod
    except ImportError as e:
        raise PoisonCamError(f"backbone '{name}' is built by solo-learn, which is not installed; install it "
                             "from https://github.com/vturrisi/solo-learn") from e
    check(name in BaseMethod._BACKBONES, f"unknown backbone '{name}'")
    model = BaseMethod._BACKBONES[name](cfg.get("method"), **kwargs)
    model.num_features = getattr(model, "num_features", None) or getattr(model, "inplanes")
    return model


def load_backbone_state(backbone: nn.Module, ckpt: PathLike, prefix: str = "backbone.", name: Optional[str] = None) -> None:
    """Load the ``prefix*`` weights of a built-in or solo-learn checkpoint into ``backbone``, exactly:
    any missing, unexpected or differently shaped weight is refused, naming ``name`` when given."""
    check_checkpoint_file(ckpt)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a torn file
        # torch's weights-only messages advise weights_only=False, which runs arbitrary code from the file: never
        # echo them, keep only the cause
        text = str(e)
        cause = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
        if cause:
            raise PoisonCamError(f"checkpoint '{ckpt}' holds objects other than weights ({cause.group(0)}), which are "
                                 "refused (unpickling them can run code from the file); give a checkpoint of tensors, "
                                 "e.g. torch.save(model.state_dict())") from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        safe = first and "weights only" not in text.lower().replace("_", " ")
        raise PoisonCamError(f"cannot load checkpoint '{ckpt}': the file is truncated or not a PyTorch checkpoint "
                             f"({type(e).__name__}{': ' + first if safe else ''})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    check(isinstance(state, dict), f"checkpoint '{ckpt}' holds no state_dict")
    # built-in checkpoints written before feature_layer became an unregistered alias repeat the
    # Grad-CAM layer as `feature_layer.*`: the same tensors again
    sub = {k[len(prefix):]: v for k, v in state.items()
           if k.startswith(prefix) and not k.startswith(prefix + "feature_layer.")}
    check(len(sub) > 0, f"checkpoint '{ckpt}' has no '{prefix}*' weights")
    own = backbone.state_dict()
    missing = [k for k in own if k not in sub]
    unexpected = [k for k in sub if k not in own]
    bad_shapes = [k for k, v in sub.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or bad_shapes:
        what = f"the '{name}' backbone" if name else "the backbone"
        raise PoisonCamError(
            f"checkpoint '{ckpt}' does not match {what}: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}), {len(bad_shapes)} of another shape "
            f"(e.g. {bad_shapes[:2]})")
    backbone.load_state_dict(sub, strict=True)


def load_threat_model(ckpt: PathLike, device: Optional[torch.device] = None,
                      cfg: Optional[Dict[str, Any]] = None) -> ThreatModel:
    """The frozen backbone of a checkpoint, in eval mode, taking [0, 1] images."""
    cfg = cfg if cfg is not None else read_run_config(ckpt)
    backbone = build_run_backbone(cfg)
    load_backbone_state(backbone, ckpt)
    mean, std = run_mean_std(cfg)
    model = ThreatModel(backbone, mean, std, cfg, str(ckpt)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device) if device is not None else model
