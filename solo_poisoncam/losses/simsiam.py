import torch
import torch.nn.functional as F


def simsiam_loss_func(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam negative cosine similarity with stop-gradient on z. Shapes (B, D)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()
