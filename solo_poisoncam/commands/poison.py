"""Poison a dataset: choose the poisons, place the trigger, write ``manifest.json`` (the ground truth),
``trigger.png`` and ``examples.png`` (poisoned images with their trigger boxes). Nothing is written
unless every input is valid.

``--write-folder`` writes a poisoned copy of the image folder ``--root`` into ``--out`` instead, the
way SSL-Backdoor's generator does (``poison/folder.py``); ``--reserve MANIFEST`` writes the manifest of
such a folder for another ``--size``."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from solo_poisoncam.checks import check
from solo_poisoncam.commands.common import add_dataset_arguments, check_out_dir, dataset_kwargs
from solo_poisoncam.io import run_lock
from solo_poisoncam.poison import ATTACKS, PoisonManifest
from solo_poisoncam.poison.folder import EXTENSIONS, SSL_BACKDOOR_SIDE, SSL_BACKDOOR_WIDTH, reserve_manifest, \
    write_poisoned_folder
from solo_poisoncam.poison.outputs import poison_dataset, resize_note, write_poison_outputs
from solo_poisoncam.poison.triggers import trigger_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="patch", help=f"one of: {', '.join(ATTACKS.names())}")
    g.add_argument("--trigger", default="htba", help="'htba' (generated from --trigger-seed) or a PNG file")
    g.add_argument("--trigger-seed", type=int, default=10)
    g.add_argument("--patch-size", type=float, default=None,
                   help="patch side: fraction of the shorter image side (<1) or pixels (>=1); default 50/224, "
                        f"and {SSL_BACKDOOR_WIDTH} px with --write-folder (pixels only there)")
    g.add_argument("--region", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="patch: share of each side the patch lies in (default 0.25 0.75, SSL-Backdoor's central "
                        "region; 0.1 0.9 spreads a large patch over many places)")
    g.add_argument("--jpeg", type=int, default=None, metavar="Q",
                   help="patch: store every image, clean and poisoned, as JPEG at quality Q (SSL-Backdoor's "
                        "generator leaves 75; off by default); with --write-folder the quality of every file (75)")
    g.add_argument("--alpha", type=float, default=None, help="patch opacity (1) or blend weight (0.2)")
    g.add_argument("--magnitude", type=float, default=100.0, help="frequency attack: DCT magnitude")
    g.add_argument("--target", type=int, default=0, help="target class index")
    g.add_argument("--rate", type=float, default=0.5, help="poison rate in (0, 1]")
    g.add_argument("--rate-of", choices=["target", "all"], default="target",
                   help="rate is a fraction of the target class or of the whole set")
    g.add_argument("--untargeted", action="store_true", help="draw poisons from every class")
    g.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    g = p.add_argument_group("written folder (SSL-Backdoor's generate_poison.py)")
    g.add_argument("--write-folder", action="store_true",
                   help="write a poisoned copy of the image folder --root (ImageFolder, optional train/ and val/) "
                        "into --out: trigger pasted at each file's own resolution, every file saved as JPEG; "
                        f"--size is the side pretrain and detect serve it at (default {SSL_BACKDOOR_SIDE})")
    g.add_argument("--val-size", type=int, default=None,
                   help="side of the patched validation images (OUT/val_patched; default --size)")
    g.add_argument("--extension", choices=EXTENSIONS, default=".JPEG", help="written file names' extension")
    g.add_argument("--reserve", default=None, metavar="MANIFEST",
                   help="write the manifest of a written folder for the folder served at --size (none: as stored)")


def trigger(args: argparse.Namespace, attack: str = "patch") -> Dict[str, Any]:
    """The trigger spec of ``--trigger`` (HTBA from ``--trigger-seed``, on an 8 x 8 grid for blend, or a PNG)."""
    if args.trigger == "htba":
        return trigger_spec("htba", seed=args.trigger_seed, **({"grid": 8} if attack == "blend" else {}))
    return trigger_spec("png", path=args.trigger)


def attack_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The attack config (``build_attack`` input) from CLI flags."""
    name = args.attack
    ATTACKS.get(name)
    if name == "frequency":
        return {"name": name, "magnitude": args.magnitude}
    cfg: Dict[str, Any] = {"name": name, "trigger": trigger(args, name)}
    if name == "patch":
        cfg["size"] = 50 / 224 if args.patch_size is None else args.patch_size
        if args.region is not None:
            cfg["region"] = list(args.region)
        if args.jpeg is not None:
            cfg["jpeg"] = args.jpeg
    if args.alpha is not None:
        cfg["alpha"] = args.alpha
    return cfg


def write_folder(args: argparse.Namespace) -> PoisonManifest:
    """``--write-folder``: the flags that apply to a written folder, and no others."""
    check(args.dataset == "folder" and args.root is not None, "--write-folder needs --dataset folder --root SRC")
    unused = [flag for flag, given in (("--attack", args.attack != "patch"), ("--region", args.region is not None),
                                       ("--alpha", args.alpha is not None), ("--untargeted", args.untargeted),
                                       ("--rate-of all", args.rate_of != "target"),
                                       ("--num-samples", args.num_samples is not None),
                                       ("--split", args.split != "train"), ("--download", args.download)) if given]
    check(not unused, "--write-folder writes SSL-Backdoor's targeted opaque patch over every image of the folder; "
                      f"{', '.join(unused)} do(es) not apply")
    width = SSL_BACKDOOR_WIDTH if args.patch_size is None else args.patch_size
    check(width >= 1 and float(width).is_integer(),
          f"--write-folder pastes the trigger at a fixed pixel width; give --patch-size in whole pixels, got {width}")
    return write_poisoned_folder(args.root, args.out, trigger(args), args.target, args.rate, args.seed, width=int(width),
                                 quality=75 if args.jpeg is None else args.jpeg,
                                 size=SSL_BACKDOOR_SIDE if args.size is None else args.size,
                                 val_size=args.val_size, extension=args.extension)


def run(args: argparse.Namespace) -> int:
    out = check_out_dir(args.out)
    if args.reserve is not None:
        manifest = reserve_manifest(PoisonManifest.load(args.reserve), args.size)
        check(not (out / "manifest.json").exists(), f"'{out}' already holds a manifest.json; choose another --out")
        with run_lock(out):
            path = manifest.save(out / "manifest.json")
        print(f"{manifest.summary()}, served at --size {args.size} -> {path}")
        return 0
    if args.write_folder:
        manifest = write_folder(args)
        print(f"{manifest.summary()}; every file JPEG at quality {manifest.written['quality']}, served at --size "
              f"{manifest.dataset['size']} -> {out / 'manifest.json'}")
        return 0
    dataset, attack, manifest = poison_dataset(
        args.dataset, args.split, dataset_kwargs(args), attack_config(args), args.target, args.rate,
        args.rate_of, not args.untargeted, args.seed)
    with run_lock(out):
        write_poison_outputs(out, dataset, attack, manifest)
    note = resize_note(attack, dataset) if args.trigger != "htba" else ""
    if note:
        print(note)
    print(f"{manifest.summary()} -> {out / 'manifest.json'}")
    return 0
