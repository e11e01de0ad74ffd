"""Metrics against hand-computed values (worked out in the comments) and against sklearn."""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.eval.metrics import (attack_metrics, auroc, average_precision, confusion_matrix,
                                         detection_metrics, localisation_metrics, mean_metrics, precision_at_k)

# Six scores, three positives, one positive/negative tie at 0.7.
SCORES = [0.9, 0.8, 0.7, 0.7, 0.4, 0.2]
LABELS = [1, 0, 1, 0, 1, 0]


def test_auroc_by_hand_with_tie():
    # 3 x 3 = 9 (pos, neg) pairs; negatives are 0.8, 0.7, 0.2.
    # pos 0.9 beats all three -> 3; pos 0.7: loses to 0.8, ties 0.7 (0.5), beats 0.2 -> 1.5;
    # pos 0.4 beats only 0.2 -> 1.  U = 5.5, AUROC = 5.5 / 9 = 11/18.
    assert auroc(SCORES, LABELS) == pytest.approx(float(Fraction(11, 18)), abs=1e-15)
    # reversing the scores mirrors it: 1 - 11/18 = 7/18
    assert auroc([-s for s in SCORES], LABELS) == pytest.approx(7 / 18, abs=1e-15)


def test_auroc_all_ties_and_perfect():
    assert auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5  # every pair tied -> 0.5
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([True, True, False, False])) == 0.0


def test_auroc_one_class_raises():
    with pytest.raises(PoisonCamError):
        auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(PoisonCamError):
        auroc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(PoisonCamError):
        auroc([0.1, 0.2], [0, 1, 1])  # length mismatch
    with pytest.raises(PoisonCamError):
        auroc([0.1, float("nan")], [0, 1])


def test_average_precision_by_hand():
    # Distinct thresholds, descending; (tp, fp) after each group, precision P, recall R:
    #   0.9: (1, 0) P=1   R=1/3   -> adds 1/3 * 1
    #   0.8: (1, 1) P=1/2 R=1/3   -> recall unchanged, adds 0
    #   0.7: (2, 2) P=1/2 R=2/3   -> adds 1/3 * 1/2   (tie: both 0.7s enter together)
    #   0.4: (3, 2) P=3/5 R=1     -> adds 1/3 * 3/5
    #   0.2: (3, 3)               -> adds 0
    # AP = 1/3 + 1/6 + 1/5 = 21/30 = 7/10
    assert average_precision(SCORES, LABELS) == pytest.approx(0.7, abs=1e-15)
    assert average_precision([3, 2, 1], [1, 1, 1]) == 1.0
    with pytest.raises(PoisonCamError):
        average_precision([3, 2, 1], [0, 0, 0])


def test_precision_at_k_tie_at_boundary():
    s = [5, 4, 4, 4, 1]
    y = [1, 1, 0, 0, 1]
    # k=1: only the 5 (a poison) -> 1
    assert precision_at_k(s, y, 1) == 1.0
    # k=2: the 2nd score is 4; strictly above: {5} -> 1 poison; 1 slot left for the tied group
    # {4, 4, 4} which holds 1 poison of 3 -> 1 + 1 * 1/3 = 4/3 expected poisons; / 2 = 2/3
    assert precision_at_k(s, y, 2) == pytest.approx(2 / 3, abs=1e-15)
    # k=3: 2 slots -> 1 + 2/3 = 5/3; / 3 = 5/9
    assert precision_at_k(s, y, 3) == pytest.approx(5 / 9, abs=1e-15)
    # k=4: the whole tie fits -> (1 + 1) / 4
    assert precision_at_k(s, y, 4) == pytest.approx(0.5, abs=1e-15)
    # k > N uses N: 3 poisons of 5
    assert precision_at_k(s, y, 100) == pytest.approx(0.6, abs=1e-15)
    with pytest.raises(PoisonCamError):
        precision_at_k(s, y, 0)


# A 10-image example: poisons are 0..3; the detector removed {0, 1, 5}.
IS_POISON = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
REMOVED_IDX = np.array([0, 1, 5])
#                  poisons ............  clean ...............................
DET_SCORES = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.6, 0.2, 0.5, 0.4, 0.0])


def test_detection_metrics_by_hand():
    d = detection_metrics(IS_POISON, REMOVED_IDX, DET_SCORES, ks=(5, 10, 20))
    # tp = 2 of 3 removed -> precision 2/3; 2 of 4 poisons -> recall 1/2;
    # F1 = 2 * (2/3)(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    assert d["precision"] == pytest.approx(2 / 3)
    assert d["recall"] == pytest.approx(1 / 2)
    assert d["f1"] == pytest.approx(4 / 7)
    assert (d["num_removed"], d["num_poisons"], d["num_samples"], d["clean_removed"]) == (3, 4, 10, 1)
    assert d["false_removal_rate"] == pytest.approx(1 / 6)  # 1 of 6 clean images removed
    # AUROC: 24 pairs; poisons 0.9, 0.8, 0.7 beat all 6 clean (18); 0.3 beats 0.1, 0.2, 0.0 (3)
    # -> 21/24 = 7/8
    assert d["auroc"] == pytest.approx(7 / 8, abs=1e-15)
    # ranking P P P N N N P N N N: AP = (1 + 1 + 1 + 4/7) / 4 = 25/28
    assert d["auprc"] == pytest.approx(25 / 28, abs=1e-15)
    # top-5 = 0.9, 0.8, 0.7, 0.6, 0.5 -> 3 poisons; top-10 -> 4; k=20 clipped to 10 -> 4/10
    assert d["precision_at_5"] == pytest.approx(3 / 5)
    assert d["precision_at_10"] == pytest.approx(4 / 10)
    assert d["precision_at_20"] == pytest.approx(4 / 10)
    assert "precision_at_50" not in d


def test_detection_metrics_mask_equals_indexes():
    mask = np.zeros(10, dtype=bool)
    mask[REMOVED_IDX] = True
    a = detection_metrics(IS_POISON, REMOVED_IDX, DET_SCORES)
    b = detection_metrics(IS_POISON, mask, DET_SCORES)
    c = detection_metrics(torch.from_numpy(IS_POISON), torch.from_numpy(mask), torch.from_numpy(DET_SCORES))
    d = detection_metrics(IS_POISON, [5, 1, 0, 1], DET_SCORES)  # list, unsorted, duplicate
    assert a == b == c == d
    assert set(a) >= {"precision_at_5", "precision_at_100", "auroc", "auprc"}


def test_detection_metrics_empty_removed():
    for removed in ([], np.array([], dtype=np.int64), np.zeros(10, dtype=bool)):
        d = detection_metrics(IS_POISON, removed)
        assert d["precision"] == 0.0 and d["recall"] == 0.0 and d["f1"] == 0.0
        assert d["num_removed"] == 0 and d["clean_removed"] == 0 and d["false_removal_rate"] == 0.0
        assert "auroc" not in d


def test_detection_metrics_clean_run():
    clean = np.zeros(10, dtype=bool)
    d = detection_metrics(clean, [2, 3], DET_SCORES, ks=(5,))
    assert d["precision"] == 0.0
    assert d["recall"] is None and d["f1"] is None
    assert d["auroc"] is None and d["auprc"] is None
    assert d["num_poisons"] == 0 and d["clean_removed"] == 2
    assert d["false_removal_rate"] == pytest.approx(0.2)  # 2 of 10 clean images removed
    assert d["precision_at_5"] == 0.0
    assert json.loads(json.dumps(d))["recall"] is None  # JSON null


def test_detection_metrics_bad_input():
    with pytest.raises(PoisonCamError):
        detection_metrics(IS_POISON, [10])  # index out of range
    with pytest.raises(PoisonCamError):
        detection_metrics(IS_POISON, np.zeros(9, dtype=bool))  # mask of the wrong length
    with pytest.raises(PoisonCamError):
        detection_metrics(IS_POISON, [0], scores=np.zeros(9))


def test_localisation_metrics_by_hand():
    true = np.array([[0, 0, 10, 10]] * 5)
    pred = np.array([
        [0, 0, 10, 10],    # identical: IoU 1, hit
        [5, 0, 15, 10],    # half-overlap: 50 / (100 + 100 - 50) = 1/3; centre x = 5 on the edge -> hit
        [20, 20, 30, 30],  # disjoint: IoU 0, miss
        [0, 0, 20, 20],    # contains the true box: 100 / 400 = 1/4, hit
        [2, 0, 12, 10],    # 80 / 120 = 2/3, hit
    ])
    m = localisation_metrics(pred, true)
    assert m["count"] == 5
    assert m["trigger_detection_accuracy"] == pytest.approx(2 / 5)  # IoU 1 and 2/3 pass 0.5
    assert m["hit_rate"] == pytest.approx(4 / 5)
    # (1 + 1/3 + 0 + 1/4 + 2/3) / 5 = (27/12) / 5 = 9/20
    assert m["mean_iou"] == pytest.approx(9 / 20)
    assert localisation_metrics(pred, true, iou_threshold=0.3)["trigger_detection_accuracy"] == pytest.approx(3 / 5)


def test_localisation_boundaries_and_empty():
    # IoU exactly 0.5 counts (>=); centre x = 5 just left of the window x0 = 6 is a miss (IoU 40/160)
    m = localisation_metrics([[0, 0, 10, 20], [6, 0, 16, 10]], torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]]))
    assert m["trigger_detection_accuracy"] == 0.5 and m["hit_rate"] == 0.5
    assert m["mean_iou"] == pytest.approx((0.5 + 0.25) / 2)
    e = localisation_metrics(np.zeros((0, 4)), np.zeros((0, 4)))
    assert e == {"trigger_detection_accuracy": None, "hit_rate": None, "mean_iou": None, "count": 0}
    with pytest.raises(PoisonCamError):
        localisation_metrics(np.zeros((2, 4)), np.zeros((3, 4)))


def test_confusion_matrix_by_hand():
    true = [0, 0, 1, 2, 2, 2]
    pred = [0, 1, 1, 2, 0, 2]
    # row = true class, column = predicted
    expected = [[1, 1, 0],
                [0, 1, 0],
                [1, 0, 2]]
    cm = confusion_matrix(pred, true, 3)
    assert cm.shape == (3, 3) and cm.tolist() == expected and cm.sum() == 6
    assert confusion_matrix(torch.tensor(pred), torch.tensor(true), 4)[3].tolist() == [0, 0, 0, 0]
    with pytest.raises(PoisonCamError):
        confusion_matrix([3], [0], 3)


def test_attack_metrics_by_hand():
    target = 0
    true_p = [0, 0, 1, 1, 1, 2, 2, 2]
    pred_p = [0, 0, 0, 0, 1, 0, 2, 1]
    true_c = [0, 1, 1, 2, 2]
    pred_c = [0, 1, 0, 2, 2]
    a = attack_metrics(pred_p, true_p, target, pred_c, true_c, num_classes=3)
    # the two target-class rows are excluded; of the 6 others, rows 2, 3, 5 are predicted as 0
    assert a["fp"] == 3 and a["num_patched_nontarget"] == 6 and a["num_patched"] == 8
    assert a["asr"] == pytest.approx(0.5)  # 3/6, not 5/8 as it would be with target rows kept
    assert a["patched_acc1"] == pytest.approx(0.5)  # correct at rows 0, 1, 4, 6
    assert a["clean_acc1"] == pytest.approx(0.8)  # 4 of 5
    assert a["clean_fp"] == 1  # row 2 (class 1) predicted as target
    assert a["clean_target_rate"] == pytest.approx(0.25)  # 1 of the 4 non-target clean
    assert a["confusion_patched"] == [[2, 0, 0], [2, 1, 0], [1, 1, 1]]
    b = attack_metrics(torch.tensor(pred_p), torch.tensor(true_p), target)
    assert b["asr"] == a["asr"] and "clean_acc1" not in b and "confusion_patched" not in b


def test_attack_metrics_edge_cases():
    a = attack_metrics([0, 0], [0, 0], target=0)
    assert a["asr"] is None and a["fp"] == 0 and a["patched_acc1"] == 1.0
    with pytest.raises(PoisonCamError):
        attack_metrics([0], [1], 0, pred_clean=[0])  # true_clean missing
    with pytest.raises(PoisonCamError):
        attack_metrics([0, 1], [1], 0)


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = 50 + 37 * seed
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # one decimal: many ties
    assert auroc(scores, labels) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(
        sk.average_precision_score(labels, scores), abs=1e-12)
    ints = rng.integers(0, 4, n)  # very heavy ties
    assert auroc(ints, labels) == pytest.approx(sk.roc_auc_score(labels, ints), abs=1e-12)
    assert average_precision(ints, labels) == pytest.approx(sk.average_precision_score(labels, ints), abs=1e-12)


def test_mean_metrics_by_hand():
    # two label draws: ASR 0.9 and 0.1 -> 0.5; FP 90 and 10 -> 50.0; a None in either row -> None;
    # the confusion matrices element-wise; a string and a bool kept from the first row
    a = {"asr": 0.9, "fp": 90, "patched_acc1": None, "confusion_patched": [[1, 3], [0, 4]], "name": "x", "ok": True}
    b = {"asr": 0.1, "fp": 10, "patched_acc1": 0.5, "confusion_patched": [[3, 1], [2, 0]], "name": "y", "ok": False}
    m = mean_metrics([a, b])
    assert m["asr"] == pytest.approx(0.5) and m["fp"] == 50.0 and m["patched_acc1"] is None
    assert m["confusion_patched"] == [[2.0, 2.0], [1.0, 2.0]]
    assert m["name"] == "x" and m["ok"] is True
    assert mean_metrics([a]) == a
    with pytest.raises(PoisonCamError):
        mean_metrics([])
