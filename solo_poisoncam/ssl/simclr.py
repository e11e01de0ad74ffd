from typing import List

import torch

from solo_poisoncam.losses.simclr import simclr_loss_func
from solo_poisoncam.models.heads import MLP
from solo_poisoncam.ssl.base import SSL_METHODS, SSLMethod


@SSL_METHODS.register("simclr")
class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020): NT-Xent on projected views."""

    DEFAULTS = {"proj_hidden_dim": 512, "proj_output_dim": 128, "temperature": 0.2}

    def __init__(self, cfg):
        super().__init__(cfg)
        mk = self.method_kwargs
        self.projector = MLP(self.features_dim, mk["proj_hidden_dim"], mk["proj_output_dim"])

    def ssl_loss(self, views: List[torch.Tensor], indexes: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.projector(self.backbone(v)) for v in views])
        return simclr_loss_func(z, indexes.repeat(len(views)), self.method_kwargs["temperature"])
