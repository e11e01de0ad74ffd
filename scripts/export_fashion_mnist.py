#!/usr/bin/env python
"""Export the Debian Fashion-MNIST as an ImageFolder tree of PNGs for solo-learn's ``data.dataset=custom``.

    OUT/train/<label>_<name>/<index>.png   (60000, or a stratified --num-samples subset)
    OUT/val/<label>_<name>/<index>.png     (the 10000 test images, or --num-val-samples)
    OUT/export.json                        (source, settings, counts, the exported indexes)

Images are the 28x28 digits zero-padded (centred) to 32x32 and repeated to RGB: the same pixels as
``build_dataset("fashion-mnist", size=32)``. Class folders are prefixed with the label, so
ImageFolder's sorted-name order is the Fashion-MNIST label order. ``<index>`` is the image's index
in the original split. The tree is written to a temporary folder beside OUT and renamed into
place: OUT is complete or absent.

    python scripts/export_fashion_mnist.py --out datasets/fashion-mnist-32
    python scripts/export_fashion_mnist.py --out /tmp/fm-tiny --classes 0-5 --num-samples 72 --num-val-samples 24
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.data.registry import FASHION_MNIST_CLASSES, build_dataset


def parse_classes(text: Optional[str]) -> Optional[List[int]]:
    """'0-5' or '0,2,4' -> sorted label list; None keeps all ten."""
    if not text:
        return None
    labels = set()
    for part in text.split(","):
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-", 1))
            labels.update(range(lo, hi + 1))
        else:
            labels.add(int(part))
    check(all(0 <= c < len(FASHION_MNIST_CLASSES) for c in labels), f"--classes must lie in 0..9, got '{text}'")
    return sorted(labels)


def stratified(targets: np.ndarray, classes: Sequence[int], num: Optional[int], seed: int) -> np.ndarray:
    """Sorted indexes of ``num`` images spread evenly over ``classes`` (the first ``num % C`` classes
    take one more); every image of those classes when ``num`` is None."""
    pools = [np.flatnonzero(targets == c) for c in classes]
    if num is None:
        return np.sort(np.concatenate(pools))
    check(num >= len(classes), f"--num-samples {num} is smaller than the number of classes ({len(classes)})")
    rng = np.random.default_rng(seed)
    base, extra = divmod(num, len(classes))
    keep = []
    for i, pool in enumerate(pools):
        k = base + (1 if i < extra else 0)
        check(k <= len(pool), f"class {classes[i]} has only {len(pool)} images, {k} asked")
        keep.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def class_folder(label: int) -> str:
    return f"{label}_{re.sub(r'[^A-Za-z0-9]+', '_', FASHION_MNIST_CLASSES[label]).strip('_')}"


def export(out: Path, root: Optional[str], classes: Optional[List[int]], num_samples: Optional[int],
           num_val_samples: Optional[int], seed: int, force: bool) -> dict:
    out = Path(out)
    if out.exists() and not force:
        raise PoisonCamError(f"'{out}' already exists; pass --force to replace it")
    classes = classes or list(range(len(FASHION_MNIST_CLASSES)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    summary = {"source": None, "size": 32, "padding": "zero, centred (28 -> 32)", "seed": seed,
               "classes": {class_folder(c): c for c in classes}, "splits": {}}
    try:
        for split, folder, num in (("train", "train", num_samples), ("test", "val", num_val_samples)):
            kw = {"root": root} if root else {}
            ds = build_dataset("fashion-mnist", split=split, size=32, **kw)
            summary["source"] = ds.spec["root"]
            idx = stratified(ds.targets, classes, num, seed)
            for c in classes:
                (tmp / folder / class_folder(c)).mkdir(parents=True)
            for i in idx:
                Image.fromarray(ds.images[i]).save(tmp / folder / class_folder(int(ds.targets[i])) / f"{i:05d}.png")
            summary["splits"][folder] = {"source_split": split, "num_images": int(len(idx)), "indexes": idx.tolist()}
        (tmp / "export.json").write_text(json.dumps(summary, indent=1) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    p.add_argument("--root", default=None, help="Fashion-MNIST IDX files (default: /usr/share/datasets/fashion-mnist "
                                                "or $POISONCAM_FASHION_MNIST)")
    p.add_argument("--classes", default=None, help="labels to keep, e.g. 0-5 or 0,2,4 (default: all ten)")
    p.add_argument("--num-samples", type=int, default=None, help="stratified training subset of this many images")
    p.add_argument("--num-val-samples", type=int, default=None, help="stratified validation subset")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsets")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    try:
        s = export(Path(args.out), args.root, parse_classes(args.classes), args.num_samples, args.num_val_samples,
                   args.seed, args.force)
    except PoisonCamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}: {v['num_images']}" for k, v in s["splits"].items())
    print(f"wrote {args.out} ({counts}; {len(s['classes'])} classes, 32x32 RGB PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
