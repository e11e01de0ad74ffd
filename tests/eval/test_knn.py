"""Weighted kNN on tiny hand-made 2-D banks."""

import math

import pytest
import torch

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.eval.knn import knn_accuracy, knn_predict


def _unit(deg, scale=1.0):
    r = math.radians(deg)
    return [scale * math.cos(r), scale * math.sin(r)]


# Four points on the unit circle at 0, 18, 90 and 180 degrees (P2 scaled by 5: normalisation
# inside knn_predict must make the scale irrelevant).
BANK = torch.tensor([_unit(0), _unit(18), _unit(90, 5.0), _unit(180)])
LABELS = torch.tensor([0, 1, 1, 0])


def test_k1_self_and_leave_one_out():
    # Without exclusion every point's nearest neighbour is itself (cosine 1) -> its own label.
    assert knn_predict(BANK, BANK, LABELS, 2, k=1).tolist() == [0, 1, 1, 0]
    # Leave-one-out, nearest *other* point by angle:
    #   P0 (0 deg)   -> P1 at 18 deg (cos .95)              -> label 1
    #   P1 (18 deg)  -> P0 at 18 deg (cos .95) beats P2 at 72 deg -> label 0
    #   P2 (90 deg)  -> P1 at 72 deg (cos .31) beats P0, P3 (cos 0) -> label 1
    #   P3 (180 deg) -> P2 at 90 deg (cos 0) beats P1 (cos -.95), P0 (cos -1) -> label 1
    assert knn_predict(BANK, BANK, LABELS, 2, k=1, exclude_self=True).tolist() == [1, 0, 1, 1]
    # query_indexes: queries are bank rows 2 and 0 -> the P2 and P0 answers above
    q = BANK[[2, 0]]
    assert knn_predict(q, BANK, LABELS, 2, k=1, exclude_self=True, query_indexes=[2, 0]).tolist() == [1, 1]
    # k larger than the bank is clipped (to N - 1 = 3 with exclusion) instead of failing; every other
    # point votes with weight e^(cos / 0.07):
    #   P0: class 1 gets e^(.95/.07) + e^0 from P1, P2; class 0 only e^(-1/.07) from P3   -> 1
    #   P1: class 0 gets e^(.95/.07) from P0; class 1 e^(.31/.07) from P2                  -> 0
    #   P2: class 0 gets 2 e^0 = 2 from P0, P3; class 1 e^(.31/.07) = 82 from P1: the one
    #       similar vote beats two orthogonal ones (a plain majority would say 0)          -> 1
    #   P3: class 1 gets e^(-.95/.07) + e^0 from P1, P2; class 0 e^(-1/.07) from P0       -> 1
    assert knn_predict(BANK, BANK, LABELS, 2, k=50, exclude_self=True).tolist() == [1, 0, 1, 1]
    assert knn_predict(BANK, BANK, LABELS, 2, k=50, exclude_self=True, temperature=100.0).tolist()[2] == 0


def test_temperature_weights_votes():
    # Query at 0 deg; bank: class 0 at 0 deg (cos 1), class 1 at +60 and -60 deg (cos .5 each),
    # class 0 at 180 deg (cos -1, outside the top 3).
    bank = torch.tensor([_unit(0), _unit(60), _unit(-60), _unit(180)])
    labels = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([_unit(0)])
    # T = 0.07: class 0 gets e^(1/.07) = e^14.3, class 1 gets 2 e^(.5/.07) = 2 e^7.1 -> class 0
    assert knn_predict(q, bank, labels, 2, k=3, temperature=0.07).tolist() == [0]
    # T = 10: class 0 gets e^.1 = 1.11, class 1 gets 2 e^.05 = 2.10 -> the majority, class 1
    assert knn_predict(q, bank, labels, 2, k=3, temperature=10.0).tolist() == [1]
    # k = 1: only the nearest -> class 0 at any temperature
    assert knn_predict(q, bank, labels, 2, k=1, temperature=10.0).tolist() == [0]


def test_chunking_numpy_and_accuracy():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 8, generator=g)
    labels = (bank[:, 0] > 0).long() + 2 * (bank[:, 1] > 0).long()  # 4 quadrant classes
    query = torch.randn(70, 8, generator=g)
    qlab = (query[:, 0] > 0).long() + 2 * (query[:, 1] > 0).long()
    a = knn_predict(query, bank, labels, 4, k=10, chunk=4096)
    b = knn_predict(query, bank, labels, 4, k=10, chunk=7)
    c = knn_predict(query.numpy(), bank.numpy(), labels.numpy(), 4, k=10, chunk=7)
    assert a.dtype == torch.long and torch.equal(a, b) and torch.equal(a, c)
    acc = knn_accuracy(query, qlab, bank, labels, 4, k=10)
    assert acc == pytest.approx(float((a == qlab).float().mean()))
    assert acc > 0.6  # chance is 0.25; quadrants in 8-D are learnable by cosine kNN


def test_bad_input():
    with pytest.raises(PoisonCamError):
        knn_predict(BANK, BANK[:, :1], LABELS, 2)  # dims differ
    with pytest.raises(PoisonCamError):
        knn_predict(BANK, BANK, LABELS[:3], 2)
    with pytest.raises(PoisonCamError):
        knn_predict(BANK, BANK, LABELS, 2, k=0)
    with pytest.raises(PoisonCamError):
        knn_predict(BANK, BANK, torch.tensor([0, 1, 2, 0]), 2)  # label outside num_classes
    with pytest.raises(PoisonCamError):
        knn_predict(BANK[:2], BANK, LABELS, 2, exclude_self=True, query_indexes=[0, 4])
