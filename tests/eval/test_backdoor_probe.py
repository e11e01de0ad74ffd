"""The backdoor check: the attacker's criterion (a linear probe on clean features) and the cluster view over k-means starts."""

import numpy as np
import pytest
import torch

from solo_poisoncam.eval.backdoor import describe_outcome, outcome, probe_view


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


def test_outcome_names_each_criterion():
    threat = {"patched_to_poison_cluster": 0.9, "control_to_poison_cluster": 0.1, "knn_asr_patched": 0.5,
              "knn_asr_control": 0.1, "probe_asr_patched": 0.05, "probe_asr_control": 0.0}
    ref = {"patched_to_poison_cluster": 0.1, "control_to_poison_cluster": 0.0, "knn_asr_patched": 0.1,
           "knn_asr_control": 0.1, "probe_asr_patched": 0.0, "probe_asr_control": 0.0}
    v = outcome(threat, ref)
    assert v["learned"] and v["criteria"] == {"cluster": True, "knn": True, "probe": False}
    assert not v["targeted"]
    v = outcome(dict(threat, probe_asr_patched=0.6), ref)
    assert v["criteria"]["probe"] and v["targeted"]
    v = outcome(dict(threat, patched_to_poison_cluster=0.2), dict(ref, patched_to_poison_cluster=0.1))
    assert not v["criteria"]["cluster"]


def test_knn_alone_is_learned():
    """kNN-ASR on the training features as trained on is a downstream attack (a kNN classifier over that
    bank): margin 0.53 - 0.12 = 0.41, reference 0.23 - 0.09 = 0.14, 0.27 above it. Learned, by kNN alone.
    With the reference's margin at 0.28 (0.13 below the threat's) it does not hold."""
    threat = {"patched_to_poison_cluster": 0.05, "control_to_poison_cluster": 0.05, "knn_asr_patched": 0.53,
              "knn_asr_control": 0.12, "probe_asr_patched": 0.02, "probe_asr_control": 0.06}
    ref = {"patched_to_poison_cluster": 0.0, "control_to_poison_cluster": 0.0, "knn_asr_patched": 0.23,
           "knn_asr_control": 0.09, "probe_asr_patched": 0.05, "probe_asr_control": 0.0}
    v = outcome(threat, ref)
    assert v["criteria"] == {"cluster": False, "knn": True, "probe": False} and v["learned"] and not v["targeted"]
    assert describe_outcome(v).startswith("LEARNED (kNN")
    v = outcome(threat, dict(ref, knn_asr_patched=0.37))
    assert not v["criteria"]["knn"] and not v["learned"]


def test_a_cached_report_gets_the_outcome_of_todays_rule(tmp_path):
    """backdoor.json written under an older rule (learned = cluster or a probe) is reused for its
    measurements, and its outcome is derived again from them: the kNN criterion holds, so learned."""
    from helpers import tiny_dataset

    from solo_poisoncam.eval.backdoor import CLUSTER_STARTS, PROBE_DRAWS, backdoor_report
    from solo_poisoncam.io import hash_obj, write_json
    from solo_poisoncam.poison import PatchAttack, PoisonedDataset, make_manifest

    base = tiny_dataset()
    manifest = make_manifest(base, PatchAttack(size=4), target=0, rate=0.5, seed=0)
    key = {"ckpt": "weights-abc", "poisons": hash_obj(manifest.attack, manifest.indexes, manifest.boxes),
           "val_images": 5000, "val_root": None, "seed": 0, "probe_draws": PROBE_DRAWS,
           "cluster_starts": CLUSTER_STARTS, "v": 5}
    threat = {"patched_to_poison_cluster": 0.0, "control_to_poison_cluster": 0.0, "knn_asr_patched": 0.6,
              "knn_asr_control": 0.1, "probe_asr_patched": 0.0, "probe_asr_control": 0.0}
    ref = dict(threat, knn_asr_patched=0.1)
    write_json(tmp_path / "backdoor.json", {"key": key, "threat": threat, "reference": ref, "learned": False,
                                            "criteria": {"knn": True}, "measured": "kept"})
    # the model is never run: a matching key reuses the stored measurements
    out = backdoor_report("weights-abc", None, PoisonedDataset(base, manifest), out=tmp_path)
    assert out["measured"] == "kept" and out["learned"] and out["criteria"]["knn"]
    assert "learned = any criterion" in out["rule"]


def test_targeted_at_either_budget_and_which():
    """The probe on 10% of the labels (mean of draws) misses, the one on every label holds: targeted,
    at every label. Margins: every label 0.9 - 0.2 = 0.7, reference 0.26 - 0.12 = 0.14: 0.56 above."""
    base = {"patched_to_poison_cluster": 0.98, "control_to_poison_cluster": 0.10, "knn_asr_patched": 0.3,
            "knn_asr_control": 0.2, "probe_asr_patched": 0.35, "probe_asr_control": 0.15}
    ref = {"patched_to_poison_cluster": 0.64, "control_to_poison_cluster": 0.06, "knn_asr_patched": 0.2,
           "knn_asr_control": 0.2, "probe_asr_patched": 0.16, "probe_asr_control": 0.10,
           "probe_all_asr_patched": 0.26, "probe_all_asr_control": 0.12}
    v = outcome(dict(base, probe_all_asr_patched=0.9, probe_all_asr_control=0.2), ref)
    assert v["targeted"] and v["targeted_at"] == ["every label"]
    # cluster 0.88 vs reference 0.58 (0.30 above: holds); kNN 0.1 (< 0.2); probe at 10% 0.20, only 0.14 above
    # the reference's 0.06 (misses); every label 0.70 vs 0.14
    assert v["criteria"] == {"cluster": True, "knn": False, "probe": False, "probe_all": True}
    assert v["learned"]
    assert "targeted: yes (every label)" in describe_outcome(v)
    # neither budget: not targeted; an every-label margin of 0.29 is under the 0.3
    v = outcome(dict(base, probe_all_asr_patched=0.49, probe_all_asr_control=0.2), ref)
    assert not v["targeted"] and v["targeted_at"] == []
    # a report from before the every-label probe: the 10% criterion alone, as before
    old_ref = {k: x for k, x in ref.items() if not k.startswith("probe_all")}
    assert set(outcome(base, old_ref)["criteria"]) == {"cluster", "knn", "probe"}


def test_cluster_view_takes_the_start_with_the_median_margin(monkeypatch):
    """Five starts with margins 0.5, 0.0, 0.3, 0.1, 0.6 (patched - control): the median, 0.3, is start 2's,
    whose numbers are reported whole, each start's margin beside."""
    import solo_poisoncam.eval.backdoor as bd

    margins = [0.5, 0.0, 0.3, 0.1, 0.6]

    def fake(train, is_poison, patched, control, k, seed):
        return {"num_poison_clusters": seed, "purity": 0.1 * seed, "patched_to_poison_cluster": 0.2 + margins[seed],
                "control_to_poison_cluster": 0.2}

    monkeypatch.setattr(bd, "_one_clustering", fake)
    out = bd.cluster_view(None, None, None, None, 10, seed=0, starts=5)
    assert out["num_poison_clusters"] == 2 and out["purity"] == pytest.approx(0.2)
    assert out["patched_to_poison_cluster"] - out["control_to_poison_cluster"] == pytest.approx(0.3)
    assert out["cluster_starts"] == 5 and out["cluster_margin_starts"] == pytest.approx(margins)


def test_cluster_view_on_features_where_the_poisons_form_a_group():
    """40 poisons in a tight group far from 160 spread images: every start gives them a cluster of their own
    (purity 1), patched images (near the group) go there and controls (spread) no more than by chance."""
    from solo_poisoncam.eval.backdoor import cluster_view

    g = torch.Generator().manual_seed(0)
    spread = torch.nn.functional.normalize(torch.randn(160, 16, generator=g), dim=1)
    centre = torch.nn.functional.normalize(torch.ones(16), dim=0)
    group = torch.nn.functional.normalize(centre + 0.01 * torch.randn(40, 16, generator=g), dim=1)
    train = torch.cat([spread, group])
    is_poison = np.r_[np.zeros(160, bool), np.ones(40, bool)]
    patched = torch.nn.functional.normalize(centre + 0.01 * torch.randn(20, 16, generator=g), dim=1)
    control = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1)
    out = cluster_view(train, is_poison, patched, control, num_clusters=8, seed=0)
    assert out["purity"] == 1.0 and out["patched_to_poison_cluster"] == 1.0
    assert out["control_to_poison_cluster"] <= 0.25  # about 1 in 8 by chance, with 8 clusters
    assert len(out["cluster_margin_starts"]) == 5 and min(out["cluster_margin_starts"]) >= 0.75
