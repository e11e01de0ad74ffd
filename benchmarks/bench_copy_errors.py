"""How alike are a trigger's copies? The verdict's own match between the pasted copies of one poisoning.

    python benchmarks/bench_copy_errors.py --data PATH/cifar10_subset.npz
    python benchmarks/bench_copy_errors.py --data PATH.npz --sizes 7 16 --qualities 0 75 --poisons 40

For each trigger side, JPEG quality (0: none) and region, the patch attack poisons the .npz set (10% of class
2, seed 0) and every pair of the first ``--poisons`` poisons is matched as the verdict matches
(``detect/verdict.py: pattern_errors``: the window on the true trigger box of one poison, searched anywhere in
the other at NCC > 0.9, the smallest RMSE there). A pair is a *copy* under RMSE 0.1 (repetition, the lossy
route), *exact* under ``verdict_exact`` 0.02 (the window and core routes) and *identical* under
``verdict_part_exact`` 0.001 (the part route). No model is trained. Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, print_tables, write_results  # noqa: E402

REGIONS = {"central": (0.25, 0.75), "random": (0.1, 0.9)}


def copy_errors(base, size: int, quality: int, region, poisons: int, seed: int = 0) -> np.ndarray:
    """(n, n) RMSE of the best NCC > 0.9 match of poison t's trigger window in poison p (inf: none; the
    diagonal inf)."""
    import torch

    from solo_poisoncam.data.indexed import IndexedImages
    from solo_poisoncam.detect.verdict import pattern_errors
    from solo_poisoncam.poison import PatchAttack, PoisonedDataset, make_manifest

    attack = PatchAttack(size=size, jpeg=quality or None, region=region)
    manifest = make_manifest(base, attack, target=2, rate=0.1, seed=seed)
    n = min(poisons, len(manifest.indexes))
    x = IndexedImages(PoisonedDataset(base, manifest), indexes=manifest.indexes[:n]).as_tensor()
    err = pattern_errors(x, torch.as_tensor(np.asarray(manifest.boxes[:n], dtype=np.int64)), x).numpy()
    err[np.arange(n), np.arange(n)] = np.inf
    return err


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a CIFAR-style .npz file (x_train, y_train)")
    p.add_argument("--sizes", nargs="+", type=int, default=[7, 12, 16], help="trigger sides in px")
    p.add_argument("--qualities", nargs="+", type=int, default=[0, 95, 90, 75], help="JPEG qualities; 0 = none")
    p.add_argument("--regions", nargs="+", default=list(REGIONS), choices=list(REGIONS))
    p.add_argument("--poisons", type=int, default=49, help="pairs among the first this many poisons")
    p.add_argument("--name", default="copy-errors")
    args = p.parse_args()
    if not Path(args.data).is_file():
        p.error(f"--data: no such file {args.data}")
    if any(q < 0 or q > 95 for q in args.qualities) or any(s < 1 for s in args.sizes) or args.poisons < 2:
        p.error("--qualities in [0, 95], --sizes >= 1 and --poisons >= 2")
    from solo_poisoncam.data import dataset_from_spec

    base = dataset_from_spec({"name": "npz", "split": "train", "root": str(Path(args.data).resolve())})
    env = environment()
    rows, raw = [], []
    for region in args.regions:
        for size in args.sizes:
            for q in args.qualities:
                start = time.perf_counter()
                err = copy_errors(base, size, q, REGIONS[region], args.poisons)
                off = ~np.eye(len(err), dtype=bool)
                e = err[off]
                r = {"region": region, "size": size, "jpeg": q, "pairs": int(off.sum()),
                     "median_rmse": float(np.median(e[np.isfinite(e)])) if np.isfinite(e).any() else None,
                     "copy": float((e < 0.1).mean()), "exact": float((e < 0.02).mean()),
                     "identical": float((e < 0.001).mean()), "seconds": round(time.perf_counter() - start, 2)}
                raw.append(r)
                rows.append([region, str(size), str(q or "none"), str(r["pairs"]),
                             "n/a" if r["median_rmse"] is None else f"{r['median_rmse']:.3f}",
                             f"{r['copy']:.2f}", f"{r['exact']:.2f}", f"{r['identical']:.3f}"])
                print(" | ".join(rows[-1]), flush=True)
    tables = {"Pairs of trigger copies (share of ordered pairs; NCC > 0.9 everywhere)": markdown_table(
        ["region", "trigger px", "JPEG quality", "pairs", "median RMSE of matches", "copy (< 0.1)",
         "exact (< 0.02)", "identical (< 0.001)"], rows)}
    path = write_results(args.name, env, vars(args), tables, raw)
    return print_tables(tables, path)


if __name__ == "__main__":
    sys.exit(main())
