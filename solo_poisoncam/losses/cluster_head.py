import torch
import torch.nn.functional as F


def cluster_head_loss_func(logits: torch.Tensor, assignments: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of cluster-head logits (B, K) against k-means pseudo-labels (B,); -1 is ignored."""
    return F.cross_entropy(logits, assignments, ignore_index=-1)
