"""A solo-learn cluster_head checkpoint as the detector's clustering model (no solo-learn needed:
the checkpoint's layout is written by hand here, as solo's Checkpointer writes it)."""

import json

import pytest
import torch
import torch.nn.functional as F

from solo_poisoncam import PoisonCamError
from solo_poisoncam.cluster.head import load_cluster_head


def _ckpt(path, centroids, labels, clustered=True, temperature=0.05):
    state = {"head.weight": centroids * 2, "centroids": centroids, "pseudo_labels": labels,
             "clustered": torch.tensor(clustered), "backbone.conv.weight": torch.zeros(1)}
    torch.save({"state_dict": state, "epoch": 0}, path)
    (path.parent / "args.json").write_text(json.dumps({"method": "cluster_head",
                                                       "method_kwargs": {"temperature": temperature}}))
    return path


def test_loads_clusters_head_and_temperature(tmp_path):
    centroids = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 1, 1])
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    km, head, t = load_cluster_head(_ckpt(tmp_path / "h.ckpt", centroids, labels), feats)
    assert t == 0.05 and torch.equal(head["weight"], centroids * 2)
    assert torch.equal(km["assignments"], labels) and km["backend"] == "cluster_head"
    assert km["scores"].tolist() == pytest.approx([1.0, 1.0, 2 ** -0.5])  # cosine to the own centroid


def test_bad_cluster_head_checkpoints(tmp_path):
    centroids, labels = torch.eye(2), torch.tensor([0, 1])
    with pytest.raises(PoisonCamError, match="clustered 2 images, the data has 3"):
        load_cluster_head(_ckpt(tmp_path / "a.ckpt", centroids, labels), torch.ones(3, 2))
    with pytest.raises(PoisonCamError, match="2-dim clusters, the threat model 4-dim"):
        load_cluster_head(_ckpt(tmp_path / "b.ckpt", centroids, labels), torch.ones(2, 4))
    with pytest.raises(PoisonCamError, match="saved before its k-means ran"):
        load_cluster_head(_ckpt(tmp_path / "c.ckpt", centroids, labels, clustered=False), torch.ones(2, 2))
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}}, tmp_path / "d.ckpt")
    with pytest.raises(PoisonCamError, match="not a solo-learn cluster_head checkpoint"):
        load_cluster_head(tmp_path / "d.ckpt", torch.ones(2, 2))
    (tmp_path / "e.ckpt").write_bytes(b"truncated")
    with pytest.raises(PoisonCamError, match="cannot load cluster-head checkpoint"):
        load_cluster_head(tmp_path / "e.ckpt", torch.ones(2, 2))
