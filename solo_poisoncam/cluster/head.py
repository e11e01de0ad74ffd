"""The cosine cluster head's pieces shared by the detector and solo-learn's ``cluster_head`` method:
the label rule for occluded views, and a trained ``cluster_head`` checkpoint as the detector's
clustering model (the method itself, the one implementation of head fine-tuning, is
``solo_adapter/cluster_head.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.cluster.kmeans import assign
from solo_poisoncam.io import read_json


def occluded_view_labels(feats: torch.Tensor, centroids: torch.Tensor, clean_labels: torch.Tensor,
                         relabel: bool = True) -> torch.Tensor:
    """The pseudo-label of an occluded view when ``cluster_head`` fine-tunes its head: its own nearest
    centroid with ``relabel``, not its clean image's cluster. Hiding a trigger must be allowed to
    move a poisoned image out of the poison cluster, or the head learns to ignore the trigger."""
    if relabel:
        return assign(feats.detach().float(), centroids.to(feats.device))[0].long()
    return clean_labels.long()


def load_cluster_head(path, features: torch.Tensor) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor], float]:
    """A trained solo-learn ``cluster_head`` checkpoint as the detector's clustering model.

    Returns (k-means record: centroids, assignments = its pseudo-labels, scores = cosine to the own
    centroid; the head's state; its temperature). ``features`` are the threat model's features of the
    images it must cover, in the order it was trained on (solo's dataset indexes).
    """
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
