import torch
import torch.nn.functional as F


def simclr_loss_func(z: torch.Tensor, indexes: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent over all views: rows with the same dataset index are positives (solo-learn's convention).

    Args:
        z: (V*B, D) projections of V views of B images.
        indexes: (V*B,) dataset index of each row.
    """
    z = F.normalize(z, dim=1)
    sim = z @ z.t() / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    pos = (indexes[:, None] == indexes[None, :]) & ~eye
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    return -(log_prob.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp_min(1)).mean()
