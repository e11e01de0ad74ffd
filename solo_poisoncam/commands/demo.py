"""The embedded default: the whole chain on real Fashion-MNIST (Debian package), sized for 2 CPU
cores (11 minutes measured before PatchSearch's search followed its official code, longer now;
--quick about 4.5). Prints the final table: detection precision, recall and trigger-detection
accuracy, and ASR and clean accuracy before and after, per method."""

from __future__ import annotations

import argparse

from solo_poisoncam.commands.run import execute


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", default=[], help="key=value overrides of the demo config")
    p.add_argument("--out", default=None, help="run folder (default runs/demo[-quick])")
    p.add_argument("--quick", action="store_true", help="3,000 images and fewer epochs: a first look")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    return execute(None, args.overrides, out, args.quick, args.quiet)
