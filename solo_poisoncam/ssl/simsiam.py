from typing import List

import torch

from solo_poisoncam.losses.simsiam import simsiam_loss_func
from solo_poisoncam.models.heads import MLP
from solo_poisoncam.ssl.base import SSL_METHODS, SSLMethod


@SSL_METHODS.register("simsiam")
class SimSiam(SSLMethod):
    """SimSiam (Chen & He 2021): predictor + stop-gradient, no negatives, no momentum encoder."""

    DEFAULTS = {"proj_hidden_dim": 512, "proj_output_dim": 128, "pred_hidden_dim": 128}

    def __init__(self, cfg):
        super().__init__(cfg)
        mk = self.method_kwargs
        self.projector = MLP(self.features_dim, mk["proj_hidden_dim"], mk["proj_output_dim"])
        self.predictor = MLP(mk["proj_output_dim"], mk["pred_hidden_dim"], mk["proj_output_dim"])

    def ssl_loss(self, views: List[torch.Tensor], indexes: torch.Tensor) -> torch.Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * (simsiam_loss_func(p1, z2) + simsiam_loss_func(p2, z1))
