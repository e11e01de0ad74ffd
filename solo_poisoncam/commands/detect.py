"""Find poisoned images with PoisonCAM (cluster activation masking) or the PatchSearch baseline.

Writes OUT/metrics.json (ground-truth metrics when a manifest is given, plus timings and the
threat model's backdoor strength), OUT/removed.txt and OUT/kept.txt (dataset indexes),
OUT/scores.npy, OUT/windows.npy and OUT/gallery.png. Stages are cached in OUT/cache (or
--cache), keyed by checkpoint bytes, data and settings, so a re-run resumes."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, Dict

from solo_poisoncam.checks import check
from solo_poisoncam.commands.common import add_dataset_arguments, check_out_dir, dataset_kwargs
from solo_poisoncam.io import run_lock


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="threat-model checkpoint (built-in or solo-learn; args.json beside it)")
    p.add_argument("--manifest", default=None, help="poison manifest (ground truth); without it no GT metrics")
    add_dataset_arguments(p, default_dataset=None)
    p.add_argument("--method", default="poisoncam", choices=["poisoncam", "patchsearch"])
    p.add_argument("--out", required=True)
    p.add_argument("--num-clusters", type=int, default=None, help="k-means K (default 10 x classes)")
    p.add_argument("--masks", default=None, choices=["occlusion", "rise", "both"])
    p.add_argument("--window", default=None,
                   help="'auto', a side in px (>=1) or a share of the side (<1); default: auto for poisoncam, "
                        "PatchSearch's fixed 60/224 of the side for patchsearch")
    p.add_argument("--score", default=None, choices=["drop", "flip", "drop+flip"])
    p.add_argument("--flip-images", type=int, default=None)
    p.add_argument("--remove", default=None, choices=["probe", "match", "classifier", "none"],
                   help="how flagged images are chosen (default: match for poisoncam, classifier for patchsearch)")
    p.add_argument("--force-remove", action="store_true",
                   help="remove even when PoisonCAM's verdict is 'no backdoor found' (the verdict is still reported)")
    p.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"], help="autocast precision (default off)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any DetectConfig field, e.g. --set poisoncam.refine=0 --set probe.samples=2048 (a field of one "
                        "section also by its name alone: --set verdict_min=10)")
    p.add_argument("--cache", default=None, help="stage cache folder (default OUT/cache)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--no-backdoor-check", action="store_true", help="skip the backdoor-strength check")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--devices", type=int, default=1, help="data-parallel processes (Lightning Fabric DDP)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_value(text: str) -> Any:
    if text.strip().lower() in ("null", "none", "~"):  # as in the YAML configs: --set coarse_stride=null
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    d: Dict[str, Any] = {"method": args.method}
    for flag, key in (("num_clusters", "num_clusters"), ("masks", "masks"), ("score", "score"),
                      ("flip_images", "flip_images"), ("remove", "remove"), ("amp", "amp")):
        if getattr(args, flag) is not None:
            d[key] = getattr(args, flag)
    if args.force_remove:
        d["force_remove"] = True
    if args.window is not None:
        d["window"] = args.window if args.window == "auto" else float(args.window)
    return {**d, **parse_sets(args.set)}


def parse_sets(items) -> Dict[str, Any]:
    """``--set KEY=VALUE`` items -> DetectConfig fields (``section.field``: that section's, e.g. ``poisoncam.refine``)."""
    from solo_poisoncam.detect.config import SECTIONS

    d: Dict[str, Any] = {}
    for item in items:
        check("=" in item, f"--set takes KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        if "." in key:
            group, name = key.split(".", 1)
            check(group in SECTIONS, f"--set {key}: no section '{group}'; sections: {', '.join(SECTIONS)}")
            d.setdefault(group, {})[name] = _parse_value(value)
        else:
            d[key] = _parse_value(value)
    return d


def resolve_data(args: argparse.Namespace):
    """(dataset to detect on, manifest or None); a manifest must match the data it is used with."""
    from solo_poisoncam.data import build_dataset, dataset_from_spec
    from solo_poisoncam.poison import PoisonedDataset, PoisonManifest

    manifest = PoisonManifest.load(args.manifest) if args.manifest else None
    if manifest is not None and manifest.in_files and args.size not in (None, manifest.dataset.get("size")):
        from solo_poisoncam.poison.folder import reserve_manifest

        # a written folder's boxes are in its files' pixels: its manifest serves any side
        manifest = reserve_manifest(manifest, args.size)
    if args.dataset is not None:
        base = build_dataset(args.dataset, split=args.split, **dataset_kwargs(args))
    else:
        check(manifest is not None, "give --dataset (and its options) or --manifest")
        base = dataset_from_spec(manifest.dataset)
    if manifest is None:
        return base, None
    manifest.check_matches(base)
    return PoisonedDataset(base, manifest, verify=False), manifest


def run(args: argparse.Namespace) -> int:
    import torch

    from solo_poisoncam.detect.config import DetectConfig
    from solo_poisoncam.detect.outputs import summary_line
    from solo_poisoncam.engine.cache import StageCache
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.pipeline.detection import detect_to_folder

    cfg = DetectConfig.from_dict(config_overrides(args))
    out = check_out_dir(args.out)
    if args.cache:
        check_out_dir(args.cache, "--cache")
    model = load_threat_model(args.ckpt)
    dataset, manifest = resolve_data(args)
    device = torch.device(args.device) if args.device else None
    if args.devices > 1 or args.num_nodes > 1:
        import lightning as L

        fabric = L.Fabric(accelerator="cuda" if torch.cuda.is_available() else "cpu", devices=args.devices,
                          num_nodes=args.num_nodes, strategy=args.strategy)
        fabric.launch()
        device = fabric.device
    runner = Runner(device, progress=not args.quiet)
    cache = StageCache(args.cache or out / "cache", enabled=not args.no_cache, runner=runner)
    backdoor = None
    if manifest is not None and not args.no_backdoor_check:
        from solo_poisoncam.eval.backdoor import backdoor_report, backdoor_summary

        def backdoor():
            return backdoor_summary(backdoor_report(args.ckpt, model, dataset, runner, seed=cfg.seed, out=out))
    extra = {"checkpoint": str(Path(args.ckpt).resolve()),
             "manifest": str(Path(args.manifest).resolve()) if args.manifest else None}
    with run_lock(out):  # a second run on OUT is refused, not silently overwritten
        result, extra, path = detect_to_folder(model, dataset, cfg, out, runner, cache, manifest, backdoor, extra)
    if path is not None:
        print(summary_line(result, extra.get("backdoor")) + f" -> {path}")
    return 0

