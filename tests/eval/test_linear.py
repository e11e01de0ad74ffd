"""Linear probe on frozen features and the stratified label budget."""

import numpy as np
import pytest
import torch

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.eval.linear import LinearProbe, label_budget_indexes, train_linear_probe


def _blobs(n_per_class=100, dim=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    x = np.concatenate([c + rng.normal(size=(n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_blobs_accurate():
    x, y = _blobs(seed=0)
    probe = train_linear_probe(x, y, 3, seed=0)
    assert isinstance(probe, LinearProbe) and not probe.training
    pred = probe.predict(x)
    assert pred.dtype == torch.long and pred.shape == (300,)
    assert float((pred == y).float().mean()) > 0.95
    assert torch.equal(probe.predict(x.numpy()), pred)  # numpy input accepted


def test_heldout_accuracy_and_standardisation():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 16)) * 3
    def draw(n):
        x = np.concatenate([c + rng.normal(size=(n, 16)) for c in centres]).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(np.repeat(np.arange(3), n))
    (x, y), (xv, yv) = draw(100), draw(100)
    probe = train_linear_probe(x, y, 3, epochs=30, batch_size=None, seed=1)
    assert float((probe.predict(xv) == yv).float().mean()) > 0.95
    z = torch.nn.functional.normalize(x, dim=1)  # statistics of the L2-normalised training features
    assert torch.allclose(probe.mean, z.mean(0), atol=1e-6)
    assert torch.allclose(probe.std, z.std(0, unbiased=False), atol=1e-6)
    plain = train_linear_probe(x, y, 3, epochs=5, standardize=False)
    assert torch.equal(plain.mean, torch.zeros(16)) and torch.equal(plain.std, torch.ones(16))


def test_deterministic_under_seed():
    x, y = _blobs(seed=2)
    a = train_linear_probe(x, y, 3, epochs=10, batch_size=32, seed=5)
    b = train_linear_probe(x, y, 3, epochs=10, batch_size=32, seed=5)
    c = train_linear_probe(x, y, 3, epochs=10, batch_size=32, seed=6)
    assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.linear.bias, b.linear.bias)
    assert not torch.equal(a.linear.weight, c.linear.weight)  # the shuffle order differs


def test_probe_bad_input():
    x, y = _blobs(n_per_class=5)
    with pytest.raises(PoisonCamError):
        train_linear_probe(x, y[:-1], 3)
    with pytest.raises(PoisonCamError):
        train_linear_probe(x, y, 2)  # label 2 outside [0, 2)
    probe = train_linear_probe(x, y, 3, epochs=1)
    with pytest.raises(PoisonCamError):
        probe.predict(x[:, :8])


def test_label_budget_stratified():
    targets = np.repeat(np.arange(3), 100)
    idx = label_budget_indexes(targets, 0.1, seed=0)
    assert idx.dtype == np.int64 and len(idx) == 30
    assert np.all(np.diff(idx) > 0)  # sorted, unique
    assert np.bincount(targets[idx]).tolist() == [10, 10, 10]
    # tiny fraction: still one per class
    tiny = label_budget_indexes(torch.from_numpy(targets), 0.001, seed=0)
    assert np.bincount(targets[tiny]).tolist() == [1, 1, 1]
    # 1.0 keeps everything
    assert np.array_equal(label_budget_indexes(targets, 1.0), np.arange(300))
    # imbalanced classes of 100, 50, 3 at 10%: round(10) = 10, round(5) = 5, round(0.3) = 0 -> at least 1
    imb = np.concatenate([np.zeros(100, int), np.ones(50, int), np.full(3, 2)])
    sel = label_budget_indexes(imb, 0.1, seed=1)
    assert np.bincount(imb[sel]).tolist() == [10, 5, 1]
    # deterministic under seed; another seed draws another subset
    assert np.array_equal(idx, label_budget_indexes(targets, 0.1, seed=0))
    assert not np.array_equal(idx, label_budget_indexes(targets, 0.1, seed=1))


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_label_budget_bad_fraction(fraction):
    with pytest.raises(PoisonCamError):
        label_budget_indexes(np.arange(10) % 2, fraction, seed=0)
