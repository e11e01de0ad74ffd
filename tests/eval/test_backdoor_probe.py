"""The attacker's criterion of the backdoor check: a linear probe on clean features."""

import numpy as np
import torch

from solo_poisoncam.eval.backdoor import probe_view, verdict


def _feats(labels, dim, rng, noise=0.05):
    f = torch.zeros(len(labels), dim)
    f[torch.arange(len(labels)), torch.as_tensor(labels)] = 1.0
    return f + noise * torch.as_tensor(rng.standard_normal((len(labels), dim)), dtype=torch.float32)


def test_probe_asr_on_a_hand_made_targeted_backdoor():
    """Patched images sit on the target class's clean features, control images on their own class:
    probe ASR 1 vs 0. The probe trains on the clean images of every class, the target class
    included (all of whose training images may be poisoned: rate 1.0 of the target)."""
    rng = np.random.default_rng(0)
    num_classes, target = 4, 2
    train_y = np.repeat(np.arange(num_classes), 50)
    val_y = np.repeat(np.arange(num_classes), 10)
    non_target = val_y[val_y != target]
    args = (_feats(train_y, 8, rng), torch.as_tensor(train_y), _feats(val_y, 8, rng), torch.as_tensor(val_y),
            _feats(np.full(len(non_target), target), 8, rng), torch.as_tensor(non_target),
            _feats(non_target, 8, rng), target, num_classes)
    out = probe_view(*args, fraction=0.2, seed=0, draws=1)
    assert out["probe_asr_patched"] == 1.0 and out["probe_asr_control"] == 0.0
    assert out["probe_fp_patched"] == len(non_target) == 30
    assert out["probe_clean_acc1"] == 1.0 and out["probe_label_fraction"] == 0.2
    # the probe on every label (200 images) sends every patched image to the target, no control one
    assert out["probe_all_asr_patched"] == 1.0 and out["probe_all_asr_control"] == 0.0
    five = probe_view(*args, fraction=0.2, seed=0)  # the default: 5 draws of 10 images per class
    assert five["probe_draws"] == 5 and five["probe_asr_patched_draws"][0] == 1.0
    assert min(five["probe_asr_patched_draws"]) >= 0.9 and five["probe_asr_control"] <= 0.05


def test_probe_criterion_is_the_mean_over_label_draws():
    """A trigger the probe sends to the target on some draws only (patched features halfway between
    the target and their own class, labels noisy): the criterion is the mean of the draws' ASRs."""
    rng = np.random.default_rng(1)
    num_classes, target = 3, 0
    train_y = np.repeat(np.arange(num_classes), 30)
    val_y = np.repeat(np.arange(num_classes), 10)
    non_target = val_y[val_y != target]
    half = 0.5 * (_feats(np.full(len(non_target), target), 6, rng, 0.0) + _feats(non_target, 6, rng, 0.0))
    args = (_feats(train_y, 6, rng, 0.6), torch.as_tensor(train_y), _feats(val_y, 6, rng), torch.as_tensor(val_y),
            half + 0.05 * torch.as_tensor(rng.standard_normal(half.shape), dtype=torch.float32),
            torch.as_tensor(non_target), _feats(non_target, 6, rng), target, num_classes)
    out = probe_view(*args, fraction=0.1, seed=0, draws=4)
    singles = [probe_view(*args, fraction=0.1, seed=d, draws=1)["probe_asr_patched"] for d in range(4)]
    assert out["probe_asr_patched_draws"] == singles and len(set(singles)) > 1
    assert abs(out["probe_asr_patched"] - sum(singles) / 4) < 1e-12


def test_verdict_names_each_criterion():
    threat = {"patched_to_poison_cluster": 0.9, "control_to_poison_cluster": 0.1, "knn_asr_patched": 0.5,
              "knn_asr_control": 0.1, "probe_asr_patched": 0.05, "probe_asr_control": 0.0}
    ref = {"patched_to_poison_cluster": 0.1, "control_to_poison_cluster": 0.0, "knn_asr_patched": 0.1,
           "knn_asr_control": 0.1, "probe_asr_patched": 0.0, "probe_asr_control": 0.0}
    v = verdict(threat, ref)
    assert v["learned"] and v["criteria"] == {"cluster": True, "knn": True, "probe": False}
    assert not v["targeted"]
    v = verdict(dict(threat, probe_asr_patched=0.6), ref)
    assert v["criteria"]["probe"] and v["targeted"]
    v = verdict(dict(threat, patched_to_poison_cluster=0.2), dict(ref, patched_to_poison_cluster=0.1))
    assert not v["criteria"]["cluster"]
