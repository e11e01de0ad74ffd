"""k-means on (N, D) features: a torch implementation on the features' device, faiss when installed.

Both backends share the k-means++ initialisation, the final assignment pass and the definition of
``inertia`` (sum of squared Euclidean distances from each point to its centroid, on L2-normalised
points when ``spherical``), so their results are directly comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from solo_poisoncam.checks import PoisonCamError, check, check_shape

BACKENDS = ("auto", "torch", "faiss")
INITS = ("k-means++", "random")
_FAISS_PIP = "pip install faiss-cpu  (or faiss-gpu-cu12 on a CUDA machine), or use backend='torch'"


@dataclass(frozen=True)
class ClusterResult:
    """Output of :func:`kmeans`.

    Attributes:
        centroids: (K, D) float, unit norm when spherical.
        assignments: (N,) long in [0, K).
        scores: (N,) float, cosine similarity to the own centroid when spherical, else the negative
            squared distance (higher = closer).
        inertia: sum of squared distances of the points to their centroids.
        backend: "torch" or "faiss", the backend that ran.
    """

    centroids: torch.Tensor
    assignments: torch.Tensor
    scores: torch.Tensor
    inertia: float
    backend: str

    @property
    def num_clusters(self) -> int:
        return self.centroids.shape[0]


def _faiss_or_none():
    try:
        import faiss  # noqa: PLC0415  (optional dependency, imported lazily)
    except ImportError:
        return None
    return faiss if hasattr(faiss, "Kmeans") else None


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


@torch.no_grad()
def assign(features: torch.Tensor, centroids: torch.Tensor, spherical: bool = True,
           chunk: int = 16384) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point.

    Args:
        features: (N, D).
        centroids: (K, D) on the same device.
        spherical: cosine similarity (both sides L2-normalised) instead of Euclidean distance.
        chunk: rows per distance matmul, bounds memory to ``chunk * K`` floats.

    Returns:
        assignments (N,) long and scores (N,): cosine similarity when spherical, else the negative
        squared distance.

    >>> a, s = assign(torch.tensor([[1., 0.], [0., 2.]]), torch.tensor([[0., 1.], [1., 0.]]))
    >>> a.tolist(), s.tolist()
    ([1, 0], [1.0, 1.0])
    """
    check_shape(features, ["N", "D"], "features")
    check_shape(centroids, ["K", str(features.shape[1])], "centroids")
    check(centroids.shape[0] >= 1, "centroids must hold at least one row")
    check(chunk >= 1, f"chunk must be >= 1, got {chunk}")
    dtype = _work_dtype(features)
    x = features.to(dtype)
    c = centroids.to(device=x.device, dtype=dtype)
    if spherical:
        x, c = F.normalize(x, dim=1), F.normalize(c, dim=1)
    return _assign(x, c, spherical, chunk)


def _assign(x: torch.Tensor, c: torch.Tensor, spherical: bool, chunk: int,
            x2: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``assign`` on prepared (normalised when spherical) tensors of one dtype and device.

    ``x2`` (N,): squared norms of x (Euclidean only), computed when missing.
    """
    n = x.shape[0]
    assignments = torch.empty(n, dtype=torch.long, device=x.device)
    scores = torch.empty(n, dtype=x.dtype, device=x.device)
    if not spherical:
        c2 = (c * c).sum(1)
        x2 = (x * x).sum(1) if x2 is None else x2
    for s in range(0, n, chunk):
        sim = x[s:s + chunk] @ c.T  # (n_chunk, K)
        if not spherical:  # -|x - c|^2 = 2 x.c - |c|^2 - |x|^2, and |x|^2 does not move the argmax
            sim = sim.mul_(2).sub_(c2)
        best, idx = sim.max(1)
        assignments[s:s + chunk] = idx
        scores[s:s + chunk] = best if spherical else (best - x2[s:s + chunk]).clamp_max_(0)
    return assignments, scores


def _kmeanspp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): one matvec over all points per centroid, no host sync."""
    n = x.shape[0]
    x2 = (x * x).sum(1)
    idx = torch.empty(k, dtype=torch.long, device=x.device)
    i = torch.randint(0, n, (1,), generator=g, device=x.device)
    d2 = None
    for j in range(k):
        if j > 0:  # draw i with probability d2[i] / sum(d2) by inverse CDF; d2 == 0 is never drawn
            cdf = d2.cumsum(0)
            u = torch.rand(1, generator=g, device=x.device, dtype=torch.float64) * cdf[-1]
            i = torch.searchsorted(cdf, u, right=True).clamp_max_(n - 1)
        idx[j:j + 1] = i
        dj = (x2 - 2 * (x @ x[i].T)[:, 0] + x2[i]).clamp_min_(0).double()  # (N,) squared distance to it
        d2 = dj if d2 is None else torch.minimum(d2, dj)
    return x[idx].clone()


def _init_centroids(x: torch.Tensor, k: int, init: str, g: torch.Generator) -> torch.Tensor:
    if init == "k-means++":
        return _kmeanspp(x, k, g)
    return x[torch.randperm(x.shape[0], generator=g, device=x.device)[:k]].clone()


def _torch_lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, spherical: bool, chunk: int) -> torch.Tensor:
    """Lloyd iterations; an empty cluster is reseeded with a point far from its centroid."""
    k = c.shape[0]
    x2 = None if spherical else (x * x).sum(1)
    for _ in range(iters):
        a, score = _assign(x, c, spherical, chunk, x2)
        counts = torch.bincount(a, minlength=k).to(x.dtype)
        new = torch.zeros_like(c).index_add_(0, a, x) / counts.clamp_min(1)[:, None]
        # empty clusters take the points worst served by their centroid (farthest first), vectorised
        empty = counts == 0
        far = score.topk(k, largest=False).indices  # (K,) lowest similarity = farthest
        rank = (empty.cumsum(0) - 1).clamp_min(0)
        new = torch.where(empty[:, None], x[far[rank]], new)
        c = F.normalize(new, dim=1) if spherical else new
    return c


def _faiss_lloyd(x: torch.Tensor, c0, k: int, iters: int, seed: int, spherical: bool, faiss) -> torch.Tensor:
    gpu = x.is_cuda and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, spherical=spherical,
                      max_points_per_centroid=10**7, min_points_per_centroid=1, gpu=gpu, verbose=False)
    xn = x.detach().to("cpu", torch.float32).contiguous().numpy()
    init = None if c0 is None else c0.detach().to("cpu", torch.float32).contiguous().numpy()
    km.train(xn, init_centroids=init)
    return torch.from_numpy(km.centroids.copy()).to(device=x.device, dtype=x.dtype)


def _resolve_backend(backend: str, features: torch.Tensor):
    check(backend in BACKENDS, f"unknown k-means backend '{backend}', choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch", None
    faiss = _faiss_or_none()
    if backend == "faiss":
        if faiss is None:
            raise PoisonCamError(f"k-means backend 'faiss' needs faiss, which is not installed: {_FAISS_PIP}")
        return "faiss", faiss
    # auto: faiss when installed, except for CUDA features with a CPU-only faiss (torch stays on the GPU)
    if faiss is None or (features.is_cuda and not (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)):
        return "torch", None
    return "faiss", faiss


@torch.no_grad()
def kmeans(features: torch.Tensor, num_clusters: int, iters: int = 20, seed: int = 0, spherical: bool = True,
           backend: str = "auto", init: str = "k-means++", chunk: int = 16384) -> ClusterResult:
    """Cluster (N, D) features into ``num_clusters`` groups with Lloyd's algorithm.

    Args:
        features: (N, D) float, any device; results come back on the same device.
        num_clusters: K, 1 <= K <= N.
        iters: Lloyd iterations (fixed count, no early stop).
        seed: seeds the initialisation (and faiss); the same seed gives the same result.
        spherical: cluster L2-normalised features by cosine similarity, centroids kept unit norm.
        backend: "torch" (runs on ``features.device``), "faiss" (needs faiss) or "auto" (faiss when
            installed, except for CUDA features when faiss has no GPU).
        init: "k-means++" (used by both backends) or "random" (K distinct points; faiss samples its own).
        chunk: rows per distance matmul in the torch backend.

    Returns:
        :class:`ClusterResult` with centroids (K, D), assignments (N,), scores (N,), inertia, backend.

    >>> x = torch.tensor([[0., 0.], [0., 1.], [10., 10.], [10., 11.]])
    >>> r = kmeans(x, 2, spherical=False, backend="torch")
    >>> bool(r.assignments[0] == r.assignments[1] != r.assignments[2] == r.assignments[3]), r.inertia
    (True, 1.0)
    """
    check(isinstance(features, torch.Tensor) and features.dim() == 2,
          f"features must be a 2-D tensor (N, D), got "
          f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    n, d = features.shape
    k = int(num_clusters)
    check(k >= 1, f"num_clusters must be >= 1, got {num_clusters}")
    check(k <= n, f"K={k} is larger than the number of images N={n}; use fewer clusters")
    check(d >= 1, "features must have at least one dimension (D >= 1)")
    check(int(iters) >= 1, f"iters must be >= 1, got {iters}")
    check(int(chunk) >= 1, f"chunk must be >= 1, got {chunk}")
    check(init in INITS, f"unknown k-means init '{init}', choose one of {', '.join(INITS)}")
    name, faiss = _resolve_backend(backend, features)
    x = features.detach().to(_work_dtype(features))
    check(bool(torch.isfinite(x).all()), "features contain NaN or inf values; check the feature extractor")
    if spherical:
        x = F.normalize(x, dim=1)

    g = torch.Generator(device=x.device).manual_seed(int(seed))
    if name == "torch":
        c = _torch_lloyd(x, _init_centroids(x, k, init, g), int(iters), spherical, int(chunk))
    else:
        c0 = _kmeanspp(x, k, g) if init == "k-means++" else None
        c = _faiss_lloyd(x, c0, k, int(iters), int(seed), spherical, faiss)
        if spherical:
            c = F.normalize(c, dim=1)

    assignments, scores = _assign(x, c, spherical, int(chunk))
    sq = (2 - 2 * scores).clamp_min(0) if spherical else -scores  # squared distances to own centroid
    return ClusterResult(centroids=c, assignments=assignments, scores=scores,
                         inertia=float(sq.sum()), backend=name)


def kmeans_state(feats: torch.Tensor, k: int, iters: int, seed: int, backend: str, device, spherical: bool = True,
                 init: str = "k-means++") -> dict:
    """:func:`kmeans` on ``device`` as a CPU dict (the detection pipeline's cached stage)."""
    res = kmeans(feats.to(device), k, iters=iters, seed=seed, backend=backend, spherical=spherical, init=init)
    return {"centroids": res.centroids.cpu(), "assignments": res.assignments.cpu(), "scores": res.scores.cpu(),
            "inertia": res.inertia, "backend": res.backend}
