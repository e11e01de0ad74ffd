import copy
import math
from typing import List

import torch

from solo_poisoncam.losses.byol import byol_loss_func
from solo_poisoncam.models.heads import MLP
from solo_poisoncam.ssl.base import SSL_METHODS, SSLMethod


@SSL_METHODS.register("byol")
class BYOL(SSLMethod):
    """BYOL (Grill et al. 2020): online predictor regresses an EMA target; tau follows solo-learn's
    cosine schedule from ``base_tau`` to ``final_tau`` over training."""

    DEFAULTS = {"proj_hidden_dim": 512, "proj_output_dim": 128, "pred_hidden_dim": 512,
                "base_tau": 0.99, "final_tau": 1.0}

    def __init__(self, cfg):
        super().__init__(cfg)
        mk = self.method_kwargs
        self.projector = MLP(self.features_dim, mk["proj_hidden_dim"], mk["proj_output_dim"])
        self.predictor = MLP(mk["proj_output_dim"], mk["pred_hidden_dim"], mk["proj_output_dim"])
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in list(self.momentum_backbone.parameters()) + list(self.momentum_projector.parameters()):
            p.requires_grad = False
        self.tau = mk["base_tau"]

    def ssl_loss(self, views: List[torch.Tensor], indexes: torch.Tensor) -> torch.Tensor:
        p = [self.predictor(self.projector(self.backbone(v))) for v in views]
        with torch.no_grad():
            z = [self.momentum_projector(self.momentum_backbone(v)) for v in views]
        return byol_loss_func(p[0], z[1]) + byol_loss_func(p[1], z[0])

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        for online, target in ((self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(self.tau).add_(po.detach(), alpha=1 - self.tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)
        mk = self.method_kwargs
        total = max(1, self.trainer.estimated_stepping_batches)
        progress = min(1.0, self.global_step / total)
        self.tau = mk["final_tau"] - (mk["final_tau"] - mk["base_tau"]) * (math.cos(math.pi * progress) + 1) / 2
        self.log("tau", self.tau, on_step=True, on_epoch=False)
