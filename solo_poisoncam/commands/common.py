"""Argument groups shared by several sub-commands."""

from __future__ import annotations

import argparse
from typing import Any, Dict, Optional


def add_dataset_arguments(p: argparse.ArgumentParser, split: bool = True,
                          default_dataset: Optional[str] = "fashion-mnist") -> None:
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default=default_dataset,
                   help="registered dataset: fashion-mnist, cifar10, cifar100, stl10, npz, folder")
    g.add_argument("--root", default=None, help="dataset root (folder: an ImageFolder tree; npz: the .npz file)")
    if split:
        g.add_argument("--split", default="train")
    g.add_argument("--size", type=int, default=None, help="serve images at this side (fashion-mnist: 32)")
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
