"""Argument groups shared by several sub-commands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Dict, Optional

from solo_poisoncam.checks import check


def add_dataset_arguments(p: argparse.ArgumentParser, split: bool = True,
                          default_dataset: Optional[str] = "fashion-mnist") -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default=default_dataset,
                   help="registered dataset: fashion-mnist, cifar10, cifar100, stl10, npz, folder")
    g.add_argument("--root", default=None, help="dataset root (folder: an ImageFolder tree, where a file that is "
                   "not a readable image is refused, named; npz: the .npz file)")
    if split:
        g.add_argument("--split", default="train")
    g.add_argument("--size", type=int, default=None, help="serve images at this side (fashion-mnist: 32; folder: "
                   "original sizes, so training on images of mixed sizes needs it)")
    g.add_argument("--num-samples", type=int, default=None, help="class-stratified subset of this many images")
    g.add_argument("--download", action="store_true", help="allow torchvision datasets to download")


def dataset_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """Only the keys the user set, so each dataset keeps its own defaults."""
    kw: Dict[str, Any] = {}
    if args.root is not None:
        kw["root"] = args.root
    if args.size is not None:
        kw["size"] = args.size
    if args.num_samples is not None:
        kw["num_samples"] = args.num_samples
    if args.download:
        kw["download"] = True
    return kw


def check_out_dir(out, flag: str = "--out") -> Path:
    """``out`` is, or can be made, a writable folder; checked before any work, creating nothing."""
    out = Path(out)
    check(not out.exists() or out.is_dir(), f"{flag} '{out}' is a file, not a folder; choose another {flag}")
    existing = next(d for d in (out, *out.parents) if d.exists() or d == d.parent)
    check(existing.is_dir(), f"{flag} '{out}' cannot be created: '{existing}' is a file; choose another {flag}")
    check(os.access(existing, os.W_OK | os.X_OK),
          f"{flag} '{out}' is not writable (no write permission on '{existing}'); choose another {flag}")
    return out
