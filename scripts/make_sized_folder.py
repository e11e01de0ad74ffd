#!/usr/bin/env python
"""Turn a small-image data set into an ImageFolder whose images differ in size and aspect ratio, a
stand-in for ImageNet's offline (docs/design.md, Data):

    OUT/train/<label>_<name>/<index>.png   (the training split, or a class-stratified --num-samples subset)
    OUT/val/<label>_<name>/<index>.png     (the test split, or --num-val-samples of it)
    OUT/sizes.json                         (source, settings, each file's width and height)

Each image is upscaled (bicubic) to a side drawn uniformly from [--min-side, --max-side] and an aspect
ratio W/H drawn log-uniformly from [3/4, 4/3] (W = side x sqrt(r), H = side / sqrt(r): the side is
the geometric mean of width and height), from a seeded generator, and saved losslessly as PNG, so
that ``poisoncam poison --write-folder``'s JPEG is the only compression. Class folders are prefixed
with the label, so ImageFolder's sorted-name order is the source's label order (up to 10 classes, or
labels zero-padded). ``<index>`` is the image's index in the source split. Written beside OUT and
renamed into place: OUT is complete or absent.

Sources: ``--npz FILE`` (CIFAR/Keras layout: x_train, y_train, x_test, y_test, optional classes;
e.g. the CIFAR-10 subset) or ``--fashion-mnist`` (the Debian files, 28 x 28 grey, as RGB).

    python scripts/make_sized_folder.py --npz /work/shared/data/cifar10-subset/cifar10_subset.npz --out datasets/cifar-sized
    python scripts/make_sized_folder.py --fashion-mnist --num-samples 5000 --num-val-samples 1000 --out datasets/fm-sized
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.data import build_dataset
from solo_poisoncam.io import write_json

ASPECT = (3 / 4, 4 / 3)


def draw_sizes(n: int, min_side: int, max_side: int, seed: int) -> np.ndarray:
    """(n, 2) (width, height): side uniform in [min_side, max_side], aspect W/H log-uniform in [3/4, 4/3]."""
    rng = np.random.default_rng(seed)
    side = rng.integers(min_side, max_side + 1, size=n).astype(np.float64)
    r = np.exp(rng.uniform(np.log(ASPECT[0]), np.log(ASPECT[1]), size=n))
    return np.stack([np.rint(side * np.sqrt(r)), np.rint(side / np.sqrt(r))], 1).astype(np.int64)


def class_folder(label: int, name: str, num_classes: int) -> str:
    digits = len(str(num_classes - 1))
    return f"{label:0{digits}d}_{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_') or label}"


def write_split(ds, folder: Path, sizes: np.ndarray) -> List[Dict[str, Any]]:
    """Every image of ``ds`` upscaled to its drawn size and saved as PNG under ``folder``."""
    names = [class_folder(c, str(n), ds.num_classes) for c, n in enumerate(ds.classes)]
    rows = []
    for i in range(len(ds)):
        c = int(ds.targets[i])
        path = folder / names[c] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in sizes[i])
        Image.fromarray(ds.get_array(i)).resize((w, h), Image.BICUBIC).save(path)
        rows.append({"file": str(path.relative_to(folder)), "label": c, "size": [w, h]})
    return rows


def make_sized_folder(out: str, source: Dict[str, Any], min_side: int = 64, max_side: int = 160,
                      num_samples: Optional[int] = None, num_val_samples: Optional[int] = None,
                      seed: int = 0) -> Path:
    """Write the folder (see the module docstring) from ``source``, a ``build_dataset`` spec without split."""
    out_path = Path(out)
    check(not out_path.exists(), f"'{out}' already exists; choose a new --out")
    check(1 <= min_side <= max_side, f"need 1 <= --min-side <= --max-side, got {min_side}, {max_side}")
    splits = {"train": build_dataset(split="train", size=None, num_samples=num_samples, **source),
              "val": build_dataset(split="test", size=None, num_samples=num_val_samples, **source)}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.tmp-", dir=out_path.parent))
    try:
        files = {}
        for k, (split, ds) in enumerate(splits.items()):
            files[split] = write_split(ds, tmp / split, draw_sizes(len(ds), min_side, max_side, seed + k))
        write_json(tmp / "sizes.json", {"source": source, "min_side": min_side, "max_side": max_side,
                                        "aspect": list(ASPECT), "seed": seed, "files": files})
        os.rename(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_path


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--npz", default=None, help="a .npz file (x_train, y_train, x_test, y_test)")
    src.add_argument("--fashion-mnist", action="store_true", help="the Debian Fashion-MNIST files")
    p.add_argument("--out", required=True)
    p.add_argument("--min-side", type=int, default=64)
    p.add_argument("--max-side", type=int, default=160)
    p.add_argument("--num-samples", type=int, default=None, help="class-stratified subset of the training split")
    p.add_argument("--num-val-samples", type=int, default=None, help="class-stratified subset of the test split")
    p.add_argument("--seed", type=int, default=0, help="sizes (the subsets use the data sets' own subset seed)")
    args = p.parse_args(argv)
    source = {"name": "npz", "root": args.npz} if args.npz else {"name": "fashion-mnist"}
    try:
        out = make_sized_folder(args.out, source, args.min_side, args.max_side, args.num_samples,
                                args.num_val_samples, args.seed)
    except PoisonCamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/train and {out}/val (sides {args.min_side}-{args.max_side} px, aspect 3/4-4/3, PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
