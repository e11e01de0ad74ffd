"""Poison a dataset: choose the poisons, place the trigger, write ``manifest.json`` (the ground truth),
``trigger.png`` and ``examples.png`` (poisoned images with their trigger boxes). Nothing is written
unless every input is valid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Tuple

from PIL import Image

from solo_poisoncam.checks import check
from solo_poisoncam.commands.common import add_dataset_arguments, dataset_kwargs
from solo_poisoncam.data import build_dataset
from solo_poisoncam.data.base import ImageDataset
from solo_poisoncam.io import hash_obj
from solo_poisoncam.poison import ATTACKS, Attack, PoisonedDataset, PoisonManifest, build_attack, make_manifest
from solo_poisoncam.poison.triggers import trigger_spec
from solo_poisoncam.viz import TRUE_COLOUR, save_png, tile


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="patch", help=f"one of: {', '.join(ATTACKS.names())}")
    g.add_argument("--trigger", default="htba", help="'htba' (generated from --trigger-seed) or a PNG file")
    g.add_argument("--trigger-seed", type=int, default=10)
    g.add_argument("--patch-size", type=float, default=50 / 224,
                   help="patch side: fraction of the shorter image side (<1) or pixels (>=1)")
    g.add_argument("--alpha", type=float, default=None, help="patch opacity (1) or blend weight (0.2)")
    g.add_argument("--magnitude", type=float, default=100.0, help="frequency attack: DCT magnitude")
    g.add_argument("--target", type=int, default=0, help="target class index")
    g.add_argument("--rate", type=float, default=0.5, help="poison rate in (0, 1]")
    g.add_argument("--rate-of", choices=["target", "all"], default="target",
                   help="rate is a fraction of the target class or of the whole set")
    g.add_argument("--untargeted", action="store_true", help="draw poisons from every class")
    g.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")


def attack_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The attack config (``build_attack`` input) from CLI flags."""
    name = args.attack
    ATTACKS.get(name)
    if name == "frequency":
        return {"name": name, "magnitude": args.magnitude}
    if args.trigger == "htba":
        trig = trigger_spec("htba", seed=args.trigger_seed, **({"grid": 8} if name == "blend" else {}))
    else:
        trig = trigger_spec("png", path=args.trigger)
    cfg: Dict[str, Any] = {"name": name, "trigger": trig}
    if name == "patch":
        cfg["size"] = args.patch_size
    if args.alpha is not None:
        cfg["alpha"] = args.alpha
    return cfg


def poison_dataset(dataset_name: str, split: str, ds_kwargs: Dict[str, Any], attack_cfg: Dict[str, Any],
                   target: int, rate: float, rate_of: str, targeted: bool,
                   seed: int) -> Tuple[ImageDataset, Attack, PoisonManifest]:
    dataset = build_dataset(dataset_name, split=split, **ds_kwargs)
    attack = build_attack(attack_cfg)
    manifest = make_manifest(dataset, attack, target, rate, rate_of, targeted, seed)
    return dataset, attack, manifest


def write_poison_outputs(out: Path, dataset: ImageDataset, attack: Attack, manifest: PoisonManifest,
                         examples: int = 16) -> None:
    """trigger.png, examples.png, then manifest.json (its presence marks a complete output). Every
    picture is made before the first file is written, so a bad image leaves nothing behind, and a
    folder holding a manifest of other poisons is refused, never overwritten."""
    if (out / "manifest.json").is_file():
        old = PoisonManifest.load(out)
        same = lambda m: hash_obj({k: v for k, v in m.to_dict().items() if k != "created"})  # noqa: E731
        check(same(old) == same(manifest),
              f"'{out}' holds a poison manifest of other settings ({old.summary()}); choose another --out or "
              "delete it")
    trigger = getattr(attack, "trigger", None)
    poisoned = PoisonedDataset(dataset, manifest, attack=attack, verify=False)
    take = manifest.indexes[:examples]
    images = [poisoned.get_array(int(i)) for i in take]
    boxes = [[(b, TRUE_COLOUR)] if attack.is_patch else [] for b in manifest.boxes[:examples]]
    scale = max(1, 128 // max(1, images[0].shape[0])) if images else 1
    grid = tile(images, boxes, scale=scale, captions=[str(int(i)) for i in take])
    out.mkdir(parents=True, exist_ok=True)
    if trigger is not None:
        save_png(Image.fromarray(trigger), out / "trigger.png")
    save_png(grid, out / "examples.png")
    manifest.save(out / "manifest.json")


def resize_note(attack: Attack, dataset: ImageDataset) -> str:
    """Says when a trigger image is pasted at another size than its own (a PNG's pixels are not kept)."""
    trigger = getattr(attack, "trigger", None)
    if trigger is None or not attack.is_patch:
        return ""
    w, h = attack.patch_shape(*dataset.image_size(0))
    th, tw = trigger.shape[:2]
    if (w, h) == (tw, th):
        return ""
    return (f"note: the {tw}x{th} px trigger is pasted at {w}x{h} px (patch size {attack.size:.4g} of the image "
            "side; --patch-size sets it)")


def run(args: argparse.Namespace) -> int:
    dataset, attack, manifest = poison_dataset(
        args.dataset, args.split, dataset_kwargs(args), attack_config(args), args.target, args.rate,
        args.rate_of, not args.untargeted, args.seed)
    out = Path(args.out)
    write_poison_outputs(out, dataset, attack, manifest)
    note = resize_note(attack, dataset) if args.trigger != "htba" else ""
    if note:
        print(note)
    print(f"{manifest.summary()} -> {out / 'manifest.json'}")
    return 0
