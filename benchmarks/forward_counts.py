"""Masked forwards per image of PoisonCAM's localisation, with and without the cluster screen, from the
detector's own count rules (``detect/poisoncam.py``: ``screen_cover``, ``fine_count``;
``detect/cam.py: REFINE_FORWARDS`` per refined window) at the defaults: a projection, not a timing.

    python benchmarks/forward_counts.py --name forward-counts

The screen masks ``screen`` images of each of K clusters, then the other images of the clusters it ranks
highest, at least ``screen_cover(N)`` of them (the projection's figure; in practice up to one cluster
more, less the sampled images among them); the measured counts of the tuning and test models are in
docs/results.md beside these.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solo_poisoncam.detect.cam import REFINE_FORWARDS as REFINE  # noqa: E402

from common import environment, markdown_table, print_tables, write_results  # noqa: E402

SIZES = [(3000, 100), (5000, 100), (20000, 100), (60000, 100), (126689, 1000)]  # (N, K): K = 10 x classes


def counts(n: int, k: int, screen: int):
    """Masked forwards by stage, the coarse and full mask counts, and the images coarse-masked and finely
    masked (``masked``, ``fine``)."""
    from solo_poisoncam.detect.config import PoisonCamConfig
    from solo_poisoncam.detect.poisoncam import build_masks, fine_count, screen_cover

    pc = PoisonCamConfig(screen=screen)
    coarse = len(build_masks(pc, 32, stride=pc.coarse_stride))
    full = len(build_masks(pc, 32))
    cover = screen_cover(pc, n)
    if cover < n:  # the sample, then the covered clusters' other images (about ``cover``)
        sample = min(screen * k, n)
        masked = min(n, sample + cover)
        refine = max(math.ceil(pc.refine * masked), pc.flip_top)
    else:
        sample, masked, refine = 0, n, math.ceil(pc.refine * n)
    fine = fine_count(pc, masked)
    stages = {"screen": sample * coarse, "coarse": (masked - sample) * coarse, "fine": fine * full,
              "refine": refine * REFINE}
    return stages, coarse, full, {"masked": masked, "fine": fine}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="forward-counts")
    args = p.parse_args(argv)
    rows, raw = [], []
    for n, k in SIZES:
        full_stages, mc, m, _ = counts(n, k, 0)
        screen_stages, _, _, _ = counts(n, k, 4)
        a, b = sum(full_stages.values()), sum(screen_stages.values())
        raw.append({"n": n, "k": k, "full": full_stages, "screen": screen_stages})
        rows.append([f"{n:,}", str(k), f"{a / n:.1f}", f"{b / n:.1f}", f"{a / b:.1f}x",
                     ", ".join(f"{s} {v:,}" for s, v in screen_stages.items())])
    head = ["N", "K", "forwards / image, every image masked", "with the screen (4 per cluster)", "fewer",
            "screen's forwards by stage"]
    tables = {f"masked forwards per image at the defaults ({mc} coarse, {m} full masks, {REFINE} per refined "
              "window; a projection from the count rules)": markdown_table(head, rows)}
    path = write_results(args.name, environment(), {"sizes": SIZES, "refine_forwards": REFINE}, tables, raw)
    return print_tables(tables, path)


if __name__ == "__main__":
    raise SystemExit(main())
