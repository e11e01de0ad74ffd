"""Fine-tune the cosine cluster head on k-means pseudo-labels under random occlusion.

The backbone stays frozen, so the head is trained on feature banks: the clean features plus
``epochs`` banks of occluded views (one random occlusion per image each), computed data-parallel
by the runner. Training on the banks is a cheap, deterministic full-data optimisation that gives
identical heads on every rank.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from solo_poisoncam.cluster.kmeans import assign
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.losses.cluster_head import cluster_head_loss_func
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.ops.masks import apply_masks
from solo_poisoncam.ops.occlusion import box_masks, random_occlusion_boxes


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


def occluded_view_labels(feats: torch.Tensor, centroids: torch.Tensor, clean_labels: torch.Tensor,
                         relabel: bool = True) -> torch.Tensor:
    """The pseudo-label of an occluded view (the detector's head fitting and solo's ``cluster_head``
    alike): its own nearest centroid with ``relabel``, not its clean image's cluster. Hiding a
    trigger must be allowed to move a poisoned image out of the poison cluster, or the head learns
    to ignore the trigger."""
    if relabel:
        return assign(feats.detach().float(), centroids.to(feats.device))[0].long()
    return clean_labels.long()


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
    """The clustering model of docs/design.md, method step 2: centroid-initialised cosine head, fine-tuned.

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
        labels.append(occluded_view_labels(bank, centroids.cpu(), assignments.cpu(), relabel))
    return train_head_on_banks(head, banks, labels, steps=steps, lr=lr, seed=seed)


def load_cluster_head(path, features: torch.Tensor) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], float]:
    """A trained solo-learn ``cluster_head`` checkpoint as the detector's clustering model.

    Returns (k-means record: centroids, assignments = its pseudo-labels, scores = cosine to the own
    centroid; the head's state; its temperature). ``features`` are the threat model's features of the
    images it must cover, in the order it was trained on (solo's dataset indexes).
    """
    from pathlib import Path

    from solo_poisoncam.checks import PoisonCamError, check
    from solo_poisoncam.io import read_json

    check(Path(path).is_file(), f"cluster-head checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as e:  # torch raises many types for bad files
        raise PoisonCamError(f"cannot load cluster-head checkpoint '{path}': {e}") from e
    missing = [k for k in ("head.weight", "centroids", "pseudo_labels", "clustered") if k not in state]
    check(not missing, f"'{path}' is not a solo-learn cluster_head checkpoint (no {missing})")
    check(bool(state["clustered"]), f"'{path}' was saved before its k-means ran (clustered=False)")
    weight, centroids, labels = state["head.weight"].float(), state["centroids"].float(), state["pseudo_labels"].long()
    check(len(labels) == len(features), f"'{path}' clustered {len(labels)} images, the data has {len(features)}")
    check(weight.shape[1] == features.shape[1],
          f"'{path}' has {weight.shape[1]}-dim clusters, the threat model {features.shape[1]}-dim features")
    temperature = 0.1
    args = Path(path).parent / "args.json"
    if args.is_file():
        temperature = float(read_json(args).get("method_kwargs", {}).get("temperature", temperature))
    scores = (F.normalize(features.float(), dim=1) * F.normalize(centroids, dim=1)[labels]).sum(1)
    km = {"centroids": centroids, "assignments": labels, "scores": scores, "inertia": float((1 - scores).sum()),
          "backend": "cluster_head"}
    return km, {"weight": weight}, temperature
