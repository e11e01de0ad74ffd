"""The built-in SSL backend's base LightningModule (solo-learn's method shape, no solo dependency)."""

from __future__ import annotations

import math
from typing import Any, Dict, List

import lightning.pytorch as pl
import torch
import torch.nn as nn

from solo_poisoncam.models.backbones import create_backbone
from solo_poisoncam.registry import Registry
from solo_poisoncam.ssl.augment import SSLAugment

SSL_METHODS: Registry = Registry("SSL method")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps (from 1/(warmup+1)), then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class SSLMethod(pl.LightningModule):
    """Backbone + two augmented views per image; subclasses implement ``ssl_loss``.

    ``cfg`` is the run config written to args.json (solo-learn-like keys: ``backbone``,
    ``method_kwargs``, ``optimizer``, ``data``). Batches are ``(indexes, uint8 images, targets)``;
    views are made on the device.
    """

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.backbone = create_backbone(cfg["backbone"]["name"], **cfg["backbone"].get("kwargs", {}))
        self.features_dim = self.backbone.num_features
        data = cfg["data"]
        self.augment = SSLAugment(data["image_size"], data["mean"], data["std"],
                                  crop_scale=tuple(cfg["augment"]["crop_scale"]),
                                  grayscale_p=cfg["augment"]["grayscale_p"], blur_p=cfg["augment"]["blur_p"])

    @property
    def method_kwargs(self) -> Dict[str, Any]:
        return self.cfg["method_kwargs"]

    def learnable_params(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("momentum_")]

    def configure_optimizers(self):
        opt_cfg = self.cfg["optimizer"]
        opt = torch.optim.AdamW(self.learnable_params(), lr=opt_cfg["lr"], weight_decay=opt_cfg["weight_decay"])
        if self.cfg.get("scheduler", "none") == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = int(total * self.cfg.get("warmup_epochs", 0) / max(1, self.cfg["max_epochs"]))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, warmup))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"feats": self.backbone(x)}

    def ssl_loss(self, views: List[torch.Tensor], indexes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        indexes, images, _ = batch
        views = [self.augment(images), self.augment(images)]
        loss = self.ssl_loss(views, indexes)
        self.log(f"train_{self.cfg['method']}_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=images.shape[0])
        return loss
