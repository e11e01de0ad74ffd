"""Downstream evaluation: the trigger's ASR beside a same-size control patch's, on a hand-made backdoor."""

import numpy as np
import torch

from solo_poisoncam.data.base import ArrayImageDataset
from solo_poisoncam.eval.downstream import evaluate_backbone, targeted_beyond_clean
from solo_poisoncam.poison import PatchAttack

LEVELS = (40, 100, 160)  # grey level of each class's images
TARGET = 2


def _grey_images(n_per_class: int, side: int = 16) -> ArrayImageDataset:
    targets = np.repeat(np.arange(len(LEVELS)), n_per_class)
    images = np.stack([np.full((side, side, 3), LEVELS[t], np.uint8) for t in targets])
    return ArrayImageDataset(images, targets, [f"c{i}" for i in range(len(LEVELS))], "grey", "train", spec={"name": "grey"})


class ManyColoursBackdoor(torch.nn.Module):
    """Features: the one-hot of the class read from the median grey level, except that an image with
    many distinct colours (the HTBA pattern; a flat grey image has 1, a one-colour control patch
    adds 1) gets the target's one-hot: a perfect backdoor that a control patch does not open."""

    image_size = 16

    def forward(self, x):
        q = (x * 255).round().long()
        codes = (q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]).flatten(1)
        colours = torch.tensor([len(torch.unique(c)) for c in codes])
        level = x.mean(1).flatten(1).median(1).values * 255
        cls = torch.cdist(level[:, None], torch.tensor(LEVELS, dtype=torch.float32)[:, None]).argmin(1)
        cls = torch.where(colours > 4, torch.full_like(cls, TARGET), cls)
        return torch.nn.functional.one_hot(cls, len(LEVELS)).float()


def test_control_asr_is_reported_beside_the_trigger_asr():
    train, val = _grey_images(20), _grey_images(10)
    attack = PatchAttack(size=6)
    out = evaluate_backbone(ManyColoursBackdoor(), train, val, attack, TARGET, fractions=(0.5,), seed=0)
    lin = out["budgets"]["0.5"]["linear"]
    assert lin["clean_acc1"] == 1.0
    # 20 non-target validation images: every patched one goes to the target, no control one does
    assert lin["num_patched_nontarget"] == 20
    assert lin["asr"] == 1.0 and lin["fp"] == 20
    assert lin["asr_control"] == 0.0 and lin["fp_control"] == 0
    assert out["budgets"]["0.5"]["knn"]["asr_control"] == 0.0


def _ev(**budgets):
    return {"budgets": {f: {"linear": {"asr": a, "asr_control": c}} for f, (a, c) in budgets.items()}}


def test_targeted_beyond_clean_compares_the_probe_margins_with_the_clean_data_model():
    # the retrain-spread's seed 12: undefended 100% vs control 40%, clean data 74.7% vs 29.3%: margins 0.60 vs 0.454
    b = targeted_beyond_clean(_ev(**{"0.1": (1.0, 0.4)}), _ev(**{"0.1": (0.747, 0.293)}))
    assert abs(b["margin_threat"] - 0.6) < 1e-9 and abs(b["margin_clean"] - 0.454) < 1e-9
    assert b["targeted"] is False and b["label_fraction"] == 0.1  # 0.146 < 0.3
    # seed 1: 100% vs 17%, clean 6.1% vs 9.2%: 0.83 - (-0.031) = 0.861
    assert targeted_beyond_clean(_ev(**{"0.1": (1.0, 0.17)}), _ev(**{"0.1": (0.061, 0.092)}))["targeted"] is True
    # the check's budgets, 10% and every label: targeted at 10% (0.5 - 0) though not with every label (0 - 0.9)
    b = targeted_beyond_clean(_ev(**{"0.1": (0.75, 0.0), "1": (0.0, 0.0)}), _ev(**{"0.1": (0.25, 0.0), "1": (0.9, 0.0)}))
    assert b["label_fraction"] == 0.1 and b["targeted"] is True and b["targeted_at"] == ["10% of the labels"]
    assert abs(b["by_budget"]["1"]["margin_threat"] - 0.0) < 1e-9 and b["by_budget"]["1"]["targeted"] is False
    # and the other way round (CIFAR-10 7 px, seed 2: 7.7% vs 10.4% at 10%, 58.5% vs 20.2% with every label;
    # clean data 3.6% vs 5.1% and 5.5% vs 6.4%): margins -0.027 vs -0.015, and 0.383 vs -0.009, 0.392 >= 0.3
    b = targeted_beyond_clean(_ev(**{"0.1": (0.077, 0.104), "1.0": (0.585, 0.202)}),
                              _ev(**{"0.1": (0.036, 0.051), "1.0": (0.055, 0.064)}))
    assert b["targeted"] is True and b["targeted_at"] == ["every label"] and b["label_fraction"] == 1.0
    assert abs(b["margin_threat"] - 0.383) < 1e-9 and abs(b["margin_clean"] + 0.009) < 1e-9
    assert b["by_budget"]["0.1"]["targeted"] is False
    # without either, the largest shared budget
    b = targeted_beyond_clean(_ev(**{"0.01": (0.75, 0.0), "0.5": (0.0, 0.0)}), _ev(**{"0.01": (0.25, 0.0), "0.5": (0.9, 0.0)}))
    assert b["label_fraction"] == 0.5 and b["targeted"] is False and b["targeted_at"] == []
    # an evaluation without the control patch (an older one) gives no answer
    older = {"budgets": {"0.1": {"linear": {"asr": 1.0}}}}
    assert targeted_beyond_clean(older, _ev(**{"0.1": (0.0, 0.0)})) is None


def test_features_once_then_evaluated_equals_the_one_call():
    from solo_poisoncam.eval.downstream import clean_features, evaluate_features, patched_features

    train, val, model, attack = _grey_images(20), _grey_images(10), ManyColoursBackdoor(), PatchAttack(size=6)
    whole = evaluate_backbone(model, train, val, attack, TARGET, fractions=(0.5, 1.0), seed=3)
    feats = clean_features(model, train, val)
    split = evaluate_features(feats, patched_features(model, val, attack, TARGET, 3), TARGET, (0.5, 1.0), 3)
    assert split == whole
    # without an attack: clean accuracy only, for every budget
    plain = evaluate_features(feats, None, None, (0.5,), 3)["budgets"]["0.5"]["linear"]
    assert plain == {"clean_acc1": 1.0}


def test_label_draws_average_the_draws_each_equal_to_its_own_seed():
    """Noisy features, 10 labelled images per class: the draw moves the probe. Draw d of a
    3-draw evaluation is the one-draw evaluation with seed + d, and the metrics are their mean."""
    from solo_poisoncam.eval.downstream import evaluate_features

    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(40)
    feats = {"train": torch.nn.functional.one_hot(y, 3).float() + 1.5 * torch.randn(120, 3, generator=g),
             "val": torch.randn(30, 3, generator=g), "y_train": y, "y_val": torch.arange(3).repeat_interleave(10),
             "num_classes": 3, "num_train": 120, "num_val": 30}
    py = torch.arange(3).repeat_interleave(10)
    patched = {"patched": torch.randn(30, 3, generator=g), "control": torch.randn(30, 3, generator=g), "y": py}
    three = evaluate_features(feats, patched, TARGET, (0.25,), seed=4, label_draws=3)
    lin = three["budgets"]["0.25"]["linear"]
    ones = [evaluate_features(feats, patched, TARGET, (0.25,), seed=4 + d)["budgets"]["0.25"]["linear"] for d in range(3)]
    assert lin["asr_draws"] == [o["asr"] for o in ones] and lin["asr_control_draws"] == [o["asr_control"] for o in ones]
    assert len(set(lin["asr_draws"])) > 1  # the draws do differ here
    assert abs(lin["asr"] - sum(o["asr"] for o in ones) / 3) < 1e-12
    assert abs(lin["fp"] - sum(o["fp"] for o in ones) / 3) < 1e-12
    assert three["label_draws"] == 3 and three["budgets"]["0.25"]["label_draws"] == 3
