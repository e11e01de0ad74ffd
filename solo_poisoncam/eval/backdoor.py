"""Backdoor strength: did the attack take? The precondition of every detection number (docs/design.md, Metrics).

Three views, each for the patched (true trigger) and the control (same-size random-colour patch)
evaluation images, for the threat model and a random-init reference of the same architecture:

(a) label-free, what a detector sees: the share of poisoned training images that sit in
    poison-majority k-means clusters (``purity``), and the share of patched / control images
    whose nearest centroid is such a cluster (the median of ``CLUSTER_STARTS`` k-means starts);
(b) kNN-ASR (cosine, k=20) against the training features as trained on;
(c) the linear probe's ASR (the attack's own success metric), probe trained on the features of
    the clean (un-poisoned) training images with a stated label budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from solo_poisoncam.cluster import assign, kmeans
from solo_poisoncam.data.base import ImageDataset
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.engine.features import extract_features
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.eval.knn import knn_predict
from solo_poisoncam.eval.linear import probes_over_draws, train_linear_probe
from solo_poisoncam.eval.metrics import attack_metrics, mean_metrics
from solo_poisoncam.models.threat_model import ThreatModel, build_run_backbone
from solo_poisoncam.poison import PatchedDataset, PoisonedDataset, build_attack

# A margin (patched minus control) this large, and this much above the reference's, counts as learned.
LEARNED_MARGIN = 0.2
# The attacker's own criterion (a targeted backdoor): probe ASR this far above the control and the reference.
TARGETED_MARGIN = 0.3
# The probe's criteria are averaged over this many draws of the labelled images: on 5,085 CIFAR-10 images one
# draw of 10% moved a model's probe ASR between 0% and 99% (benchmarks/results/label-draws-cifar10-wide-s2.md).
PROBE_DRAWS = 5
# The cluster criterion is the median of this many k-means starts: one start called a model with 49 poisons
# among 5,085 images "not learned" (no poison-majority cluster) that another start called learned at 74.5% vs
# 16.9% (benchmarks/results/checkpoints-cifar10-wide-r0.1-notlearned.md).
CLUSTER_STARTS = 5


def poison_clusters(assignments: np.ndarray, is_poison: np.ndarray, num_clusters: int) -> np.ndarray:
    """(K,) bool: clusters where poisoned images are the majority of members."""
    total = np.bincount(assignments, minlength=num_clusters)
    poisons = np.bincount(assignments[is_poison], minlength=num_clusters)
    return (2 * poisons > total) & (total > 0)


def _one_clustering(train: torch.Tensor, is_poison: np.ndarray, patched: torch.Tensor, control: torch.Tensor,
                    num_clusters: int, seed: int) -> Dict[str, Any]:
    res = kmeans(train, num_clusters, seed=seed, spherical=True)
    a = res.assignments.cpu().numpy()
    majority = poison_clusters(a, is_poison, num_clusters)
    pa = assign(patched, res.centroids)[0].cpu().numpy()
    ca = assign(control, res.centroids)[0].cpu().numpy()
    return {
        "num_poison_clusters": int(majority.sum()),
        "purity": float(majority[a[is_poison]].mean()) if is_poison.any() else None,
        "patched_to_poison_cluster": float(majority[pa].mean()),
        "control_to_poison_cluster": float(majority[ca].mean()),
    }


def cluster_view(train: torch.Tensor, is_poison: np.ndarray, patched: torch.Tensor, control: torch.Tensor,
                 num_clusters: int, seed: int = 0, starts: int = CLUSTER_STARTS) -> Dict[str, Any]:
    """The clustering of ``starts`` k-means starts (seeds ``seed``, ``seed + 1``, ...) whose margin
    (patched minus control share in poison-majority clusters) is their median, with every start's
    margin beside (``cluster_margin_starts``): at a few dozen poisons among K clusters of about as
    many images, whether the poisons hold a majority of one cluster turns on the start."""
    runs = [_one_clustering(train, is_poison, patched, control, num_clusters, seed + i) for i in range(starts)]
    margins = [r["patched_to_poison_cluster"] - r["control_to_poison_cluster"] for r in runs]
    median = sorted(range(starts), key=lambda i: (margins[i], i))[(starts - 1) // 2]
    return {**runs[median], "cluster_starts": int(starts), "cluster_margin_starts": margins}


def knn_view(train: torch.Tensor, labels: torch.Tensor, patched: torch.Tensor, control: torch.Tensor, target: int,
             num_classes: int, k: int = 20) -> Dict[str, float]:
    out = {}
    for name, q in (("patched", patched), ("control", control)):
        pred = knn_predict(q, train, labels, num_classes, k=k)
        out[f"knn_asr_{name}"] = float((pred == target).float().mean())
    return out


def probe_scores(probe, val: torch.Tensor, val_labels: torch.Tensor, patched: torch.Tensor,
                 patched_labels: torch.Tensor, control: torch.Tensor, target: int) -> Dict[str, Any]:
    """One probe's ASR on the patched and on the control features, its FP count and clean accuracy."""
    m = attack_metrics(probe.predict(patched), patched_labels, target, probe.predict(val), val_labels)
    mc = attack_metrics(probe.predict(control), patched_labels, target)
    return {"asr": m["asr"], "control": mc["asr"], "fp": m["fp"], "clean_acc1": m["clean_acc1"]}


def probe_view(clean_train: torch.Tensor, labels: torch.Tensor, val: torch.Tensor,
               val_labels: torch.Tensor, patched: torch.Tensor, patched_labels: torch.Tensor, control: torch.Tensor,
               target: int, num_classes: int, fraction: float, seed: int, draws: int = PROBE_DRAWS) -> Dict[str, Any]:
    """The attacker's criterion: a probe on the features of the *clean* training images (the
    un-poisoned originals, every class present even when all target images were poisoned), averaged
    over ``draws`` draws of the labelled images (seeds ``seed``, ``seed + 1``, ...), each draw's ASR
    beside; and one probe on every label (``probe_all_*``), where no draw is left to chance."""
    def scores(probe):
        return probe_scores(probe, val, val_labels, patched, patched_labels, control, target)

    runs = [scores(probe) for _, probe in probes_over_draws(clean_train, labels, num_classes, fraction, seed, draws)]
    m, every = mean_metrics(runs), scores(train_linear_probe(clean_train, labels, num_classes, seed=seed))
    return {"probe_asr_patched": m["asr"], "probe_asr_control": m["control"], "probe_fp_patched": m["fp"],
            "probe_clean_acc1": m["clean_acc1"], "probe_label_fraction": fraction, "probe_draws": int(draws),
            "probe_asr_patched_draws": [r["asr"] for r in runs], "probe_asr_control_draws": [r["control"] for r in runs],
            "probe_all_asr_patched": every["asr"], "probe_all_asr_control": every["control"],
            "probe_all_clean_acc1": every["clean_acc1"]}


def measure(model: torch.nn.Module, train: IndexedImages, clean_train: IndexedImages, is_poison: np.ndarray,
            val: IndexedImages, patched: IndexedImages, control: IndexedImages, target: int, num_classes: int,
            num_clusters: int, runner: Runner, probe_fraction: float, seed: int,
            train_feats: Optional[torch.Tensor] = None, probe_draws: int = PROBE_DRAWS) -> Dict[str, Any]:
    f_train = train_feats if train_feats is not None else extract_features(model, train, runner)
    f_clean, f_val, f_patched, f_control = (extract_features(model, x, runner)
                                            for x in (clean_train, val, patched, control))
    labels = train.targets
    out = cluster_view(f_train, is_poison, f_patched, f_control, num_clusters, seed)
    out.update(knn_view(f_train, labels, f_patched, f_control, target, num_classes))
    out.update(probe_view(f_clean, clean_train.targets, f_val, val.targets, f_patched, patched.targets, f_control,
                          target, num_classes, probe_fraction, seed, probe_draws))
    return out


def _margins(m: Dict[str, Any]) -> Dict[str, float]:
    out = {"cluster": m["patched_to_poison_cluster"] - m["control_to_poison_cluster"],
           "knn": m["knn_asr_patched"] - m["knn_asr_control"],
           "probe": (m["probe_asr_patched"] or 0.0) - (m["probe_asr_control"] or 0.0)}
    if "probe_all_asr_patched" in m:  # reports from before the every-label probe have none
        out["probe_all"] = (m["probe_all_asr_patched"] or 0.0) - (m["probe_all_asr_control"] or 0.0)
    return out


def outcome(threat: Dict[str, Any], reference: Dict[str, Any]) -> Dict[str, Any]:
    """Which criteria hold. A criterion (cluster, kNN, probe on 10% of the labels, probe on every label)
    holds when its margin (patched - control) is >= LEARNED_MARGIN and beats the random-init
    reference's margin by as much; ``learned`` = any criterion (docs/design.md, Metrics: why kNN
    counts). ``targeted`` is the
    attacker's own criterion: a probe-ASR margin >= TARGETED_MARGIN and that much above the
    reference's, at 10% of the labels (mean of the draws) or with every label (``targeted_at`` says
    which: a downstream user with either budget is attacked). A heuristic summary; the numbers count."""
    t, r = _margins(threat), _margins(reference)
    criteria = {k: bool(t[k] >= LEARNED_MARGIN and t[k] - r[k] >= LEARNED_MARGIN) for k in t if k in r}
    at = [k for k in ("probe", "probe_all") if k in t and k in r
          and t[k] >= TARGETED_MARGIN and t[k] - r[k] >= TARGETED_MARGIN]
    return {"learned": any(criteria.values()),
            "criteria": criteria, "targeted": bool(at), "targeted_at": [_BUDGET[k] for k in at],
            "margins": t, "reference_margins": r,
            "rule": f"a criterion holds when its margin (patched - control) >= {LEARNED_MARGIN} and >= reference + "
                    f"{LEARNED_MARGIN}; learned = any criterion; targeted = a probe margin >= {TARGETED_MARGIN} "
                    f"and >= reference + {TARGETED_MARGIN}, at 10% of the labels (mean of {PROBE_DRAWS} draws) or "
                    f"with every label"}


def budget_name(fraction) -> str:
    """A label budget in words, as the check and the downstream criterion name it."""
    return "every label" if float(fraction) == 1.0 else f"{float(fraction):.0%} of the labels"


_BUDGET = {"probe": budget_name(0.1), "probe_all": budget_name(1.0)}


def describe_outcome(b: Dict[str, Any]) -> str:
    """'LEARNED (cluster, kNN; targeted: no)' - the backdoor check's outcome with the criteria that hold."""
    held = [{"knn": "kNN", "probe_all": "probe on every label"}.get(k, k) for k, v in b.get("criteria", {}).items() if v]
    head = "LEARNED" if b["learned"] else "NOT learned"
    at = f" ({', '.join(b['targeted_at'])})" if b.get("targeted") and b.get("targeted_at") else ""
    return f"{head} ({', '.join(held) or 'no criterion'}; targeted: {'yes' + at if b.get('targeted') else 'no'})"


def random_reference(model: ThreatModel, seed: int = 0) -> ThreatModel:
    """Same architecture and normalisation, random initialisation (seeded)."""
    torch.manual_seed(seed)
    ref = ThreatModel(build_run_backbone(model.config), model.mean.flatten().tolist(), model.std.flatten().tolist(),
                      model.config, checkpoint="random-init")
    return ref.eval()


def check_images(poisoned: PoisonedDataset, val_base: ImageDataset, size: int, seed: int) -> Dict[str, IndexedImages]:
    """The backdoor check's images at the model's ``size``: the poisoned training set as trained on
    (``train``), its clean originals (``clean_train``), the held-out images (``val``), and the same with
    the true trigger (``patched``) or a same-size random-colour control patch (``control``) pasted at
    places drawn from ``seed``. A written folder's files hold its poisons, so there the clean training
    images are its un-poisoned files."""
    manifest = poisoned.manifest
    attack = build_attack(manifest.attack)
    clean = np.flatnonzero(~manifest.is_poison()) if manifest.in_files else None
    return {"train": IndexedImages(poisoned, size=size), "clean_train": IndexedImages(poisoned.base, clean, size=size),
            "val": IndexedImages(val_base, size=size),
            "patched": IndexedImages(PatchedDataset(val_base, attack, manifest.target, seed=seed), size=size),
            "control": IndexedImages(PatchedDataset(val_base, attack, manifest.target, seed=seed, control=True),
                                     size=size)}


def backdoor_strength(model: ThreatModel, poisoned: PoisonedDataset, val_base: ImageDataset,
                      runner: Optional[Runner] = None, num_clusters: Optional[int] = None, probe_fraction: float = 0.1,
                      seed: int = 0, train_feats: Optional[torch.Tensor] = None,
                      reference: Optional[torch.nn.Module] = None, probe_draws: int = PROBE_DRAWS) -> Dict[str, Any]:
    """Backdoor strength of ``model`` beside a random-init reference; the content of ``backdoor.json``."""
    runner = runner or Runner()
    manifest = poisoned.manifest
    num_classes = len(poisoned.classes)
    k = num_clusters or 10 * num_classes
    sets = check_images(poisoned, val_base, model.image_size, seed)
    patched = sets["patched"]
    args = (sets["train"], sets["clean_train"], manifest.is_poison(), sets["val"], patched, sets["control"],
            manifest.target, num_classes, k, runner, probe_fraction, seed)
    threat = measure(model, *args, train_feats=train_feats, probe_draws=probe_draws)
    ref_model = reference if reference is not None else random_reference(model, seed)
    ref = measure(ref_model, *args, probe_draws=probe_draws)
    return {
        "checkpoint": model.checkpoint,
        "attack": manifest.attack, "target": manifest.target, "num_poisons": manifest.num_poisons,
        "settings": {"num_clusters": k, "knn_k": 20, "probe_label_fraction": probe_fraction,
                     "probe_draws": probe_draws, "cluster_starts": CLUSTER_STARTS, "seed": seed,
                     "val_split": Path(val_base.root).name if hasattr(val_base, "root") else val_base.split,
                     "num_patched": len(patched)},
        "threat": threat,
        "reference": {"kind": getattr(ref_model, "checkpoint", "reference"), **ref},
        **outcome(threat, ref),
    }


def _draws(m: Dict[str, Any]) -> str:
    d = m.get("probe_asr_patched_draws") or []
    return f"; mean of {len(d)} label draws: " + " / ".join(f"{a:.0%}" for a in d) if len(d) > 1 else ""


def format_backdoor(b: Dict[str, Any]) -> str:
    t, r = b["threat"], b["reference"]
    row = lambda m: (f"purity {m['purity']:.0%} | patched->poison cluster {m['patched_to_poison_cluster']:.0%} "  # noqa: E731
                     f"(control {m['control_to_poison_cluster']:.0%}) | kNN-ASR {m['knn_asr_patched']:.0%} "
                     f"(control {m['knn_asr_control']:.0%}) | probe ASR {m['probe_asr_patched']:.0%} "
                     f"(control {m['probe_asr_control']:.0%}{_draws(m)}), clean acc {m['probe_clean_acc1']:.1%}"
                     + ("" if m.get("probe_all_asr_patched") is None else
                        f" | every label: probe ASR {m['probe_all_asr_patched']:.0%} (control {m['probe_all_asr_control']:.0%})"))
    return (f"backdoor {describe_outcome(b)}\n  threat model: {row(t)}\n"
            f"  reference ({r['kind']}): {row(r)}")


def validation_split(spec: Dict[str, Any], max_images: Optional[int] = None, root: Optional[str] = None):
    """The held-out split of the dataset a manifest was made on (test split, same geometry); ``root``
    points a folder dataset at another held-out folder (solo-learn's ``data.val_path``)."""
    from solo_poisoncam.data import dataset_from_spec

    spec = dict(spec, split="test")
    spec.pop("files", None)  # a training subset's file list says nothing about the held-out split
    if root is not None:
        spec["root"] = str(root)
    if "num_samples" in spec:
        spec["num_samples"] = max_images
    return dataset_from_spec(spec)


def backdoor_report(ckpt, model: ThreatModel, poisoned: PoisonedDataset, runner: Optional[Runner] = None,
                    val_images: Optional[int] = 5000, seed: int = 0, write: bool = True,
                    train_feats: Optional[torch.Tensor] = None, val_root: Optional[str] = None,
                    out: Optional[Path] = None) -> Dict[str, Any]:
    """``backdoor.json`` in ``out`` (default: beside the checkpoint): reused when its key (checkpoint
    bytes, or the model's weight hash when ``ckpt`` is no file; poisons; settings) matches, otherwise
    measured and written (atomically). ``val_root``: another held-out image folder."""
    from solo_poisoncam.io import hash_file, hash_obj, read_json, write_json

    manifest = poisoned.manifest
    key = {"ckpt": hash_file(ckpt) if Path(ckpt).is_file() else str(ckpt),
           "poisons": hash_obj(manifest.attack, manifest.indexes, manifest.boxes),
           "val_images": val_images, "val_root": None if val_root is None else str(val_root), "seed": seed, "probe_draws": PROBE_DRAWS,
           "cluster_starts": CLUSTER_STARTS, "v": 5}
    path = Path(out if out is not None else Path(ckpt).parent) / "backdoor.json"
    if path.is_file():
        try:
            old = read_json(path)
            if hash_obj(old.get("key")) == hash_obj(key):  # as JSON: lists and tuples alike
                # the outcome is derived from the stored measurements: a changed rule never leaves a stale one
                return {**old, **outcome(old["threat"], old["reference"])}
        except ValueError:
            pass
    val = validation_split(manifest.dataset, val_images, val_root)
    report = backdoor_strength(model, poisoned, val, runner, seed=seed, train_feats=train_feats)
    report["key"] = key
    if write and (runner is None or runner.is_main):
        write_json(path, report)
    return report


SUMMARY_KEYS = ("learned", "criteria", "targeted", "targeted_at", "margins", "reference_margins", "threat", "reference", "rule",
                "settings")


def backdoor_summary(report: Dict[str, Any]) -> Dict[str, Any]:
    """What a detection's metrics.json keeps of the backdoor report (CLI and solo-learn hook alike)."""
    return {k: report[k] for k in SUMMARY_KEYS if k in report}
