"""k-means: partition recovery, determinism, torch/faiss parity, k-means++ vs random, errors."""

import importlib

import pytest
import torch

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.cluster import ClusterResult, assign, kmeans

kmeans_module = importlib.import_module("solo_poisoncam.cluster.kmeans")  # the package attribute is the function


def blobs(n_per: int = 50, dim: int = 8, k: int = 3, noise: float = 0.1, seed: int = 0):
    """k tight blobs at 10 * e_i (separated both in angle and in distance)."""
    g = torch.Generator().manual_seed(seed)
    centers = 10 * torch.eye(k, dim)
    labels = torch.arange(k).repeat_interleave(n_per)
    x = centers[labels] + noise * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


def contingency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Ka, Kb) counts of points with label i in a and j in b."""
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    return torch.bincount(a * kb + b, minlength=ka * kb).view(ka, kb)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to relabelling: every row and every column of the contingency table has one non-zero cell."""
    table = contingency(a.cpu(), b.cpu()) > 0
    return bool((table.sum(0) == 1).all() and (table.sum(1) == 1).all())


def test_contingency_helper():
    a = torch.tensor([0, 0, 1, 1])
    assert same_partition(a, torch.tensor([1, 1, 0, 0]))
    assert not same_partition(a, torch.tensor([0, 1, 1, 1]))
    assert not same_partition(a, torch.tensor([0, 0, 0, 0]))


def _backend(name):
    if name == "faiss":
        pytest.importorskip("faiss")


@pytest.mark.parametrize("spherical", [True, False])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_blobs_recovered(backend, spherical):
    _backend(backend)
    x, labels = blobs()
    r = kmeans(x, 3, spherical=spherical, backend=backend, seed=0)
    assert isinstance(r, ClusterResult) and r.backend == backend
    assert r.centroids.shape == (3, 8) and r.assignments.shape == (150,) and r.scores.shape == (150,)
    assert r.assignments.dtype == torch.long and r.centroids.dtype == torch.float32
    assert same_partition(r.assignments, labels)
    if spherical:
        assert torch.allclose(r.centroids.norm(dim=1), torch.ones(3), atol=1e-5)
        assert bool((r.scores > 0.99).all()) and bool((r.scores <= 1 + 1e-6).all())  # cosine to own centroid
    else:
        assert bool((r.scores <= 0).all())  # negative squared distance
        assert r.inertia == pytest.approx(float(-r.scores.sum()), rel=1e-5)


def test_blobs_on_device(device):
    x, labels = blobs()
    r = kmeans(x.to(device), 3, backend="torch")
    assert r.centroids.device.type == device.type and r.assignments.device.type == device.type
    assert same_partition(r.assignments, labels)


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_same_seed_same_result(backend, init):
    _backend(backend)
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    a = kmeans(x, 7, seed=3, backend=backend, init=init, iters=5)
    b = kmeans(x, 7, seed=3, backend=backend, init=init, iters=5)
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia


def test_assign_matches_result():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(2))
    for spherical in (True, False):
        r = kmeans(x, 4, spherical=spherical, backend="torch")
        a, s = assign(x, r.centroids, spherical=spherical, chunk=7)  # chunking must not change anything
        assert torch.equal(a, r.assignments)
        assert torch.allclose(s, r.scores, atol=1e-5)


def test_assign_hand_example():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    c = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    a, s = assign(x, c, spherical=False)
    assert a.tolist() == [0, 1, 0]
    assert s.tolist() == [0.0, -1.0, -2.0]


@pytest.mark.parametrize("spherical", [True, False])
def test_torch_and_faiss_inertia_agree(spherical):
    pytest.importorskip("faiss")
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    t = kmeans(x, 10, backend="torch", spherical=spherical, seed=0)
    f = kmeans(x, 10, backend="faiss", spherical=spherical, seed=0)
    assert f.backend == "faiss" and t.backend == "torch"
    assert abs(t.inertia - f.inertia) / t.inertia < 0.01


def test_kmeanspp_beats_random_on_far_small_clusters():
    """A large blob plus three tiny far-away clusters: random init rarely seeds the small ones."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(600, 2, generator=g)
    far = torch.tensor([[100.0, 0.0], [0.0, 100.0], [-100.0, -100.0]]).repeat_interleave(5, 0)
    x = torch.cat([big, far + 0.1 * torch.randn(15, 2, generator=g)])
    seeds = range(4)
    pp = [kmeans(x, 4, spherical=False, backend="torch", init="k-means++", seed=s).inertia for s in seeds]
    rnd = [kmeans(x, 4, spherical=False, backend="torch", init="random", seed=s).inertia for s in seeds]
    assert sum(pp) / len(pp) <= sum(rnd) / len(rnd)


def test_empty_clusters_are_reseeded():
    # ten copies of 0 and one each of 1 and 2: random init mostly picks 0 three times
    x = torch.tensor([0.0] * 10 + [1.0, 2.0])[:, None]
    for seed in range(5):
        r = kmeans(x, 3, spherical=False, backend="torch", init="random", seed=seed, iters=5)
        assert torch.bincount(r.assignments, minlength=3).min() > 0
        assert r.inertia == pytest.approx(0.0, abs=1e-6)


def test_auto_backend_runs():
    x, labels = blobs()
    r = kmeans(x, 3, backend="auto")
    assert r.backend in ("torch", "faiss")
    assert same_partition(r.assignments, labels)


def test_errors(monkeypatch):
    x = torch.randn(5, 3)
    with pytest.raises(PoisonCamError, match=r"K=6 is larger than the number of images N=5"):
        kmeans(x, 6)
    with pytest.raises(PoisonCamError, match="num_clusters"):
        kmeans(x, 0)
    with pytest.raises(PoisonCamError, match="2-D"):
        kmeans(torch.randn(5, 3, 2), 2)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(PoisonCamError, match="NaN"):
        kmeans(bad, 2)
    with pytest.raises(PoisonCamError, match="backend"):
        kmeans(x, 2, backend="sklearn")
    with pytest.raises(PoisonCamError, match="init"):
        kmeans(x, 2, init="greedy")
    assert issubclass(PoisonCamError, ValueError)
    monkeypatch.setattr(kmeans_module, "_faiss_or_none", lambda: None)
    with pytest.raises(PoisonCamError, match="pip install faiss"):
        kmeans(x, 2, backend="faiss")
    assert kmeans(x, 2, backend="auto").backend == "torch"  # falls back without faiss
