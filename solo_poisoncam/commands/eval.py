"""Evaluate a frozen backbone downstream: linear probe and kNN on label budgets (1%, 10%, 100%),
clean top-1, patched top-1, ASR (share of non-target patched validation images predicted as the
target) and FP (their count), and the confusion matrix on patched data. Writes OUT/metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from solo_poisoncam.checks import check
from solo_poisoncam.commands.common import add_dataset_arguments, dataset_kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True)
    p.add_argument("--manifest", default=None, help="poison manifest: its dataset, attack and target (for ASR/FP)")
    add_dataset_arguments(p, split=False, default_dataset=None)
    p.add_argument("--label-fraction", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--label-draws", type=int, default=5,
                   help="draws of the labelled images per budget, metrics averaged (1: one draw, as in SSL-Backdoor)")
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--train-images", type=int, default=None, help="limit the labelled pool (default: all)")
    p.add_argument("--val-images", type=int, default=None, help="limit the validation split (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from solo_poisoncam.data import build_dataset, dataset_from_spec
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.downstream import evaluate_backbone
    from solo_poisoncam.io import write_json
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.poison import PoisonManifest, build_attack

    manifest = PoisonManifest.load(args.manifest) if args.manifest else None
    if args.dataset is not None:
        spec = {"name": args.dataset, **dataset_kwargs(args)}
    else:
        check(manifest is not None, "give --manifest or --dataset")
        spec = dict(manifest.dataset)
    spec.pop("split", None)
    train_spec = dict(spec, **({"num_samples": args.train_images} if args.train_images else {}))
    train = dataset_from_spec({**train_spec, "split": "train"}) if "name" in spec else build_dataset(split="train", **spec)
    val_spec = dict(spec, num_samples=args.val_images) if "num_samples" in spec or args.val_images else dict(spec)
    val = dataset_from_spec({**val_spec, "split": "test"})
    model = load_threat_model(args.ckpt)
    attack = build_attack(manifest.attack) if manifest else None
    runner = Runner(torch.device(args.device) if args.device else None, progress=False)
    result = evaluate_backbone(model, train, val, attack, manifest.target if manifest else None,
                               args.label_fraction, args.seed, args.knn_k, runner, label_draws=args.label_draws)
    result.update({"checkpoint": str(args.ckpt), "manifest": args.manifest,
                   "definitions": {"asr": "non-target patched validation images predicted as the target / their number",
                                   "fp": "their count (SSL-Backdoor / PatchSearch)",
                                   "asr_control": "the same with a same-size random-colour patch instead of the trigger",
                                   "label_fraction": "share of the clean training labels the probe and kNN bank use"}})
    out = Path(args.out)
    write_json(out / "metrics.json", result)
    for fraction, row in result["budgets"].items():
        lin = row["linear"]
        text = f"labels {float(fraction):.0%}: linear clean acc {lin['clean_acc1']:.3f}"
        if manifest:
            text += (f", patched acc {lin['patched_acc1']:.3f}, ASR {lin['asr']:.3f} (FP {lin['fp']}; "
                     f"control patch {lin['asr_control']:.3f})")
            if lin.get("asr_draws"):
                text += " ASR per label draw " + " / ".join(f"{a:.3f}" for a in lin["asr_draws"])
        print(text + f" | kNN clean acc {row['knn']['clean_acc1']:.3f}")
    print(f"-> {out / 'metrics.json'}")
    return 0
