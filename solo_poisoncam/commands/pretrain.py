"""Train a threat model with the built-in Lightning backend (for machines without solo-learn).

Writes OUT/args.json, OUT/<name>-ep=<E>.ckpt (read exactly like a solo-learn checkpoint),
OUT/last.ckpt (resume point), OUT/logs/metrics.csv and, for a poisoned run, a copy of the
manifest and OUT/backdoor.json (did the attack take? beside a random-init reference).
Re-running the same command resumes or reuses the finished run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.commands.common import add_dataset_arguments, check_out_dir, dataset_kwargs
from solo_poisoncam.io import read_indexes, run_lock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="byol", help="simclr, byol or simsiam (BYOL learns a patch backdoor fastest on CPU)")
    p.add_argument("--backbone", default="cnn_small", help="cnn_small, cnn, resnet18, resnet50")
    p.add_argument("--poison", default=None, help="poison manifest (DIR or DIR/manifest.json); omit for clean data")
    add_dataset_arguments(p, default_dataset=None)
    p.add_argument("--keep", default=None, help="train only on these dataset indexes (kept.txt from detect)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--scheduler", choices=["none", "cosine"], default="none",
                   help="learning-rate schedule: constant, or cosine decay per step")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up before the cosine decay")
    p.add_argument("--crop-min-scale", type=float, default=0.2)
    p.add_argument("--method-kwargs", default="{}", help='JSON, e.g. \'{"temperature": 0.2}\'')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="1")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder (a run in it with the same settings is resumed)")
    p.add_argument("--no-backdoor-check", action="store_true",
                   help="skip the backdoor check after training (it needs the data's held-out split: test or val)")
    p.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (CSV logs always)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from solo_poisoncam.ssl import PretrainConfig, pretrain

    check_out_dir(args.out)
    check(args.poison is not None or args.dataset is not None, "give --poison MANIFEST or --dataset for clean data")
    try:
        method_kwargs = json.loads(args.method_kwargs)
    except ValueError as e:
        raise PoisonCamError(f"--method-kwargs is not valid JSON: {e}") from e
    dataset = None
    if args.poison is None:
        dataset = {"name": args.dataset, "split": args.split, **dataset_kwargs(args)}
    backdoor_check = args.poison is not None and not args.no_backdoor_check
    if backdoor_check:
        _check_held_out(args.poison)
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    cfg = PretrainConfig(out=args.out, method=args.method, backbone=args.backbone, manifest=args.poison, dataset=dataset,
                         keep=read_indexes(args.keep) if args.keep else None, max_epochs=args.epochs,
                         # --dataset takes --size itself; a manifest fixes the data, so --size sizes the batches
                         image_size=args.size if args.poison is not None else None,
                         batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         scheduler=args.scheduler, warmup_epochs=args.warmup_epochs,
                         crop_scale=(args.crop_min_scale, 1.0), method_kwargs=method_kwargs, seed=args.seed,
                         accelerator=args.accelerator, devices=devices, num_workers=args.num_workers,
                         progress=not args.quiet, wandb=args.wandb)
    with run_lock(args.out):
        ckpt = pretrain(cfg)
        line = f"trained {args.method}/{args.backbone} for {args.epochs} epochs -> {ckpt}"
        if backdoor_check:
            from solo_poisoncam.engine.runner import Runner
            from solo_poisoncam.eval.backdoor import backdoor_report, describe_outcome, format_backdoor
            from solo_poisoncam.models.threat_model import load_threat_model
            from solo_poisoncam.poison import PoisonedDataset, PoisonManifest

            manifest = PoisonManifest.load(args.poison)
            poisoned = PoisonedDataset.from_manifest(manifest)
            report = backdoor_report(ckpt, load_threat_model(ckpt), poisoned, Runner(progress=not args.quiet),
                                     seed=args.seed)
            print(format_backdoor(report))
            line += f" | backdoor {describe_outcome(report)} ({Path(ckpt).parent / 'backdoor.json'})"
    print(line)
    return 0


def _check_held_out(manifest_path: str) -> None:
    """The backdoor check after training needs the data's held-out split: find it missing before training."""
    from solo_poisoncam.eval.backdoor import validation_split
    from solo_poisoncam.poison import PoisonManifest

    spec = PoisonManifest.load(manifest_path).dataset
    try:
        validation_split(spec)  # the images backdoor_report will read, so a bad one is found now too
    except PoisonCamError as e:
        raise PoisonCamError(f"{e} (the backdoor check after training reads the held-out split; "
                             "--no-backdoor-check skips it)") from None
