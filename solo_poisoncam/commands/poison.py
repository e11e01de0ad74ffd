"""Poison a dataset: choose the poisons, place the trigger, write ``manifest.json`` (the ground truth),
``trigger.png`` and ``examples.png`` (poisoned images with their trigger boxes). Nothing is written
unless every input is valid."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from solo_poisoncam.commands.common import add_dataset_arguments, dataset_kwargs
from solo_poisoncam.poison import ATTACKS
from solo_poisoncam.poison.outputs import poison_dataset, resize_note, write_poison_outputs
from solo_poisoncam.poison.triggers import trigger_spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataset_arguments(p)
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="patch", help=f"one of: {', '.join(ATTACKS.names())}")
    g.add_argument("--trigger", default="htba", help="'htba' (generated from --trigger-seed) or a PNG file")
    g.add_argument("--trigger-seed", type=int, default=10)
    g.add_argument("--patch-size", type=float, default=50 / 224,
                   help="patch side: fraction of the shorter image side (<1) or pixels (>=1)")
    g.add_argument("--region", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="patch: share of each side the patch lies in (default 0.25 0.75, SSL-Backdoor's central "
                        "region; 0.1 0.9 spreads a large patch over many places)")
    g.add_argument("--jpeg", type=int, default=None, metavar="Q",
                   help="patch: save each poisoned image as JPEG at quality Q, as SSL-Backdoor's generator does (75)")
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
        if args.region is not None:
            cfg["region"] = list(args.region)
        if args.jpeg is not None:
            cfg["jpeg"] = args.jpeg
    if args.alpha is not None:
        cfg["alpha"] = args.alpha
    return cfg


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
