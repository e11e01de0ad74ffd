"""Fine-tune the cosine cluster head on k-means pseudo-labels under random occlusion.

The backbone stays frozen, so the head is trained on feature banks: the clean features plus
``epochs`` banks of occluded views (one random occlusion per image each), computed data-parallel
by the runner. Training on the banks is a cheap, deterministic full-data optimisation that gives
identical heads on every rank.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from solo_poisoncam.cluster.kmeans import assign
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.masks import apply_masks
from solo_poisoncam.detect.occlusion import box_masks, random_occlusion_boxes
from solo_poisoncam.detect.runner import Runner
from solo_poisoncam.losses.cluster_head import cluster_head_loss_func
from solo_poisoncam.models.heads import CosineClusterHead


@torch.no_grad()
def occluded_features(model: torch.nn.Module, images: IndexedImages, boxes: torch.Tensor, fill: torch.Tensor,
                      runner: Runner, batch_size: int = 512) -> torch.Tensor:
    """L2-normalised features (N, D) of the images with ``boxes`` (indexed by dataset index) hidden."""
    model = model.to(runner.device).eval()
    boxes_dev = boxes.to(runner.device)
    fill_dev = fill.to(runner.device) if isinstance(fill, torch.Tensor) else fill

    def fn(idx, x):
        x = x.float() / 255
        m = box_masks(boxes_dev[idx], x.shape[-2], x.shape[-1])
        return F.normalize(model(apply_masks(x, m[:, None], fill=fill_dev)).float(), dim=1)

    return runner.map_images(fn, images, batch_size=batch_size, desc="occluded features")


def train_head_on_banks(head: CosineClusterHead, banks: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                        steps: int = 200, lr: float = 1e-2, batch_size: int = 4096, seed: int = 0) -> CosineClusterHead:
    """Adam on cross-entropy over the concatenated banks and their pseudo-labels."""
    x = torch.cat(list(banks))
    y = torch.cat(list(labels))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    head.train()
    for _ in range(steps):
        pick = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g)
        loss = cluster_head_loss_func(head(x[pick]), y[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def fit_cluster_head(model: torch.nn.Module, images: IndexedImages, features: torch.Tensor, assignments: torch.Tensor,
                     centroids: torch.Tensor, fill: torch.Tensor, runner: Runner, temperature: float = 0.1,
                     epochs: int = 2, steps: int = 200, lr: float = 1e-2,
                     occlusion_area: Tuple[float, float] = (0.02, 0.25), occlusion_p: float = 0.5,
                     seed: int = 0, batch_size: int = 512, relabel: bool = True) -> CosineClusterHead:
    """The clustering model of DESIGN.md step 2: centroid-initialised cosine head, fine-tuned.

    ``epochs=0`` returns the head at its k-means initialisation.
    """
    head = CosineClusterHead(centroids.cpu(), temperature)
    if epochs <= 0:
        return head.eval()
    s = images[0][1].shape[-1]
    banks, labels = [features.cpu()], [assignments.cpu().long()]
    g = torch.Generator().manual_seed(seed)
    n_total = int(images.indexes.max()) + 1
    for _ in range(epochs):
        boxes = random_occlusion_boxes(n_total, s, s, occlusion_area, occlusion_p, generator=g)
        bank = occluded_features(model, images, boxes, fill, runner, batch_size)
        banks.append(bank)
        # the occluded view's own nearest centroid, not the clean image's: hiding a trigger must be
        # allowed to move a poisoned image out of the poison cluster, or the head learns to ignore it
        labels.append(assign(bank, centroids.cpu())[0].long() if relabel else assignments.cpu().long())
    return train_head_on_banks(head, banks, labels, steps=steps, lr=lr, seed=seed)
