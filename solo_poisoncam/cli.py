"""``poisoncam`` command line: one sub-command per pipeline stage, each in ``solo_poisoncam.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from solo_poisoncam.checks import PoisonCamError

COMMANDS = {
    "poison": "write a poison manifest (ground truth) and an example grid",
    "pretrain": "train a threat model with the built-in backend (solo-learn absent)",
    "detect": "find poisoned images: PoisonCAM or PatchSearch",
    "eval": "linear / kNN evaluation with clean accuracy, ASR and FP",
    "run": "the whole chain from a config: poison, train, detect, retrain, evaluate, report",
    "demo": "the embedded default: the whole chain on Fashion-MNIST, sized for a CPU",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poisoncam", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"solo_poisoncam.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=module.__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PoisonCamError as e:
        print(f"poisoncam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_line(args, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 130


# where each command keeps what it finished (what a re-run of the same command reuses)
KEPT = {"pretrain": "checkpoints (last.ckpt)", "detect": "stage cache", "run": "finished stages",
        "demo": "finished stages", "eval": "nothing (re-run from the start)", "poison": "nothing (no partial output)"}


def interrupted_line(args: argparse.Namespace, argv: List[str]) -> str:
    """One line on Ctrl-C: what is kept, where, and the command that resumes."""
    import shlex

    out = getattr(args, "cache", None) or getattr(args, "out", None)
    kept = KEPT.get(args.command, "finished work")
    where = f" in '{out}'" if out and not kept.startswith("nothing") else ""
    return f"poisoncam {args.command}: interrupted; kept: {kept}{where}; resume with: poisoncam {shlex.join(argv)}"


if __name__ == "__main__":
    sys.exit(main())
