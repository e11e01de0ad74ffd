"""Downstream evaluation of a frozen backbone: linear probe and kNN, clean accuracy, ASR and FP.

The probe is trained on a stratified label budget of the clean training images (SSL-Backdoor /
PatchSearch: 1% and 10%); the kNN bank is the same labelled subset. Patched images are the
non-target validation images with the trigger pasted at a random place (10-90% of the side); the
control images carry a same-size patch of one random colour at the same places, so ``asr_control``
is the share a patch of that size sends to the target class without being the trigger (the natural
shortcut a residual ASR is measured against).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from solo_poisoncam.data.base import ImageDataset
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.engine.features import extract_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.eval.backdoor import TARGETED_MARGIN, budget_name
from solo_poisoncam.eval.knn import knn_predict
from solo_poisoncam.eval.linear import probes_over_draws
from solo_poisoncam.eval.metrics import attack_metrics, mean_metrics
from solo_poisoncam.poison import PatchedDataset
from solo_poisoncam.poison.attacks import Attack


def evaluate_backbone(model: torch.nn.Module, train: ImageDataset, val: ImageDataset, attack: Optional[Attack] = None,
                      target: Optional[int] = None, fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0,
                      knn_k: int = 20, runner: Optional[Runner] = None, probe_epochs: int = 100,
                      label_draws: int = 1) -> Dict[str, Any]:
    """Linear and kNN metrics per label budget; ASR/FP/confusion when an attack and target are given.

    ``train`` must be the *clean* labelled training data (labels are never poisoned here). ``seed``
    places the patches and, with ``label_draws``, draws the labelled images: see :func:`evaluate_features`.
    """
    runner = runner or Runner(progress=False)
    feats = clean_features(model, train, val, runner)
    patched = None if attack is None else patched_features(model, val, attack, target, seed, runner)
    return evaluate_features(feats, patched, target, fractions, seed, knn_k, probe_epochs, label_draws)


def clean_features(model: torch.nn.Module, train: ImageDataset, val: ImageDataset,
                   runner: Optional[Runner] = None) -> Dict[str, Any]:
    """Frozen features and labels of the clean training and validation images."""
    runner = runner or Runner(progress=False)
    size = getattr(model, "image_size", None)
    return {"train": extract_features(model, IndexedImages(train, size=size), runner),
            "val": extract_features(model, IndexedImages(val, size=size), runner),
            "y_train": torch.as_tensor(train.targets), "y_val": torch.as_tensor(val.targets),
            "num_classes": len(train.classes), "num_train": len(train),
            "num_val": len(val)}


def patched_features(model: torch.nn.Module, val: ImageDataset, attack: Attack, target: int, seed: int,
                     runner: Optional[Runner] = None) -> Dict[str, Any]:
    """Features of the validation images with the trigger, and with the control patch, at the places
    drawn from ``seed``."""
    runner = runner or Runner(progress=False)
    size = getattr(model, "image_size", None)
    patched = PatchedDataset(val, attack, target, seed=seed)
    control = PatchedDataset(val, attack, target, seed=seed, control=True)
    return {"patched": extract_features(model, IndexedImages(patched, size=size), runner),
            "control": extract_features(model, IndexedImages(control, size=size), runner),
            "y": torch.as_tensor(patched.targets)}


def evaluate_features(feats: Dict[str, Any], patched: Optional[Dict[str, Any]] = None, target: Optional[int] = None,
                      fractions: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0, knn_k: int = 20,
                      probe_epochs: int = 100, label_draws: int = 1) -> Dict[str, Any]:
    """:func:`evaluate_backbone` on features already extracted (``clean_features``, ``patched_features``).

    Each budget is evaluated on ``label_draws`` draws of the labelled images (seeds ``seed``,
    ``seed + 1``, ...; each also orders the probe's batches) and its metrics are their mean, with the
    per-draw ASRs beside them (``asr_draws``, ``asr_control_draws``): at a few dozen labels per class
    the draw alone can move a probe's ASR from 0 to 99% (docs/design.md, Metrics). One draw is the
    protocol of SSL-Backdoor and PatchSearch, whose 10% of ImageNet-100 is about 12,600 images.
    """
    f_train, y_train, f_val, y_val = feats["train"], feats["y_train"], feats["val"], feats["y_val"]
    num_classes = feats["num_classes"]
    results: Dict[str, Any] = {}
    for fraction in fractions:
        draws: Dict[str, list] = {"linear": [], "knn": []}
        for pick, probe in probes_over_draws(f_train, y_train, num_classes, fraction, seed, label_draws, probe_epochs):
            bank, bank_y = f_train[pick], y_train[pick]
            for name, predict in (("linear", probe.predict),
                                  ("knn", lambda f: knn_predict(f, bank, bank_y, num_classes, k=min(knn_k, len(pick))))):
                pred_val = predict(f_val)
                if patched is not None:
                    m = attack_metrics(predict(patched["patched"]), patched["y"], target, pred_val, y_val,
                                       num_classes=num_classes)
                    mc = attack_metrics(predict(patched["control"]), patched["y"], target)
                    m.update(asr_control=mc["asr"], fp_control=mc["fp"])
                else:
                    m = {"clean_acc1": float((pred_val == y_val).float().mean())}
                draws[name].append(m)
        row: Dict[str, Any] = {"label_fraction": fraction, "labelled_images": int(len(pick)),
                               "label_draws": int(label_draws)}
        for name, ms in draws.items():
            row[name] = mean_metrics(ms)
            if len(ms) > 1 and patched is not None:
                row[name].update(asr_draws=[m["asr"] for m in ms], asr_control_draws=[m["asr_control"] for m in ms])
        results[f"{fraction:g}"] = row
    return {"num_train": feats["num_train"], "num_val": feats["num_val"], "num_classes": num_classes, "target": target,
            "knn_k": knn_k, "seed": seed, "label_draws": int(label_draws), "budgets": results}


def targeted_beyond_clean(undefended: Dict[str, Any], clean: Dict[str, Any],
                          margin: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """The attacker's criterion against an SSL model of the same recipe trained on the clean data.

    The backdoor check's reference is a random-init network; a large trigger can be a natural shortcut
    to the target class that SSL on clean data learns too (a 16 px patch on 32 px CIFAR-10 images: the
    clean-data model's linear-probe ASR ranged 6-75% over SSL seeds). Targeted beyond clean data: the
    undefended model's probe-ASR margin (trigger minus control patch) exceeds the clean-data model's by
    at least ``margin`` (the check's TARGETED_MARGIN) at one of the check's budgets, 10% of the labels or
    every label, each where both evaluations have it (with neither, the largest both have).
    ``targeted_at`` names the budgets where it holds, ``by_budget`` gives each one's margins, and
    ``margin_threat`` / ``margin_clean`` / ``label_fraction`` are those of the first budget where it holds
    (else of the first). Both are one SSL run each: state it beside the result. None without control ASRs.
    """
    margin = TARGETED_MARGIN if margin is None else margin
    shared = set(undefended["budgets"]) & set(clean["budgets"])
    if not shared:
        return None
    fracs = [f for f in sorted(shared, key=float) if float(f) in (0.1, 1.0)] or [max(shared, key=float)]
    by_budget = {}
    for frac in fracs:
        u, c = undefended["budgets"][frac]["linear"], clean["budgets"][frac]["linear"]
        if u.get("asr_control") is None or c.get("asr_control") is None:
            return None
        mu, mc = u["asr"] - u["asr_control"], c["asr"] - c["asr_control"]
        by_budget[frac] = {"margin_threat": mu, "margin_clean": mc, "targeted": bool(mu - mc >= margin)}
    at = [f for f in fracs if by_budget[f]["targeted"]]
    lead = at[0] if at else fracs[0]
    return {"targeted": bool(at), "targeted_at": [budget_name(f) for f in at],
            "margin_threat": by_budget[lead]["margin_threat"], "margin_clean": by_budget[lead]["margin_clean"],
            "label_fraction": float(lead), "by_budget": by_budget,
            "rule": f"probe-ASR margin (trigger - control patch) of the undefended model >= the clean-data model's "
                    f"+ {margin}, at {' or '.join(budget_name(f) for f in fracs)}; one SSL run each"}
