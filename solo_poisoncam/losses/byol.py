import torch
import torch.nn.functional as F


def byol_loss_func(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss 2 - 2 cos(p, z), with the target z treated as a constant. Shapes (B, D)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()
