"""Hand-written batched ops vs ``kornia.augmentation`` for the same job, side by side in one run.

    python benchmarks/bench_augment.py [--batch 256] [--size 32] [--repeats 20]

Rows: SSL views (random resized crop + flip, colour jitter, grayscale: ``ssl/augment.py``) and
random square occlusion (``ops/occlusion.py``: boxes + masks, used to fit the cluster head) against
Kornia's ``RandomResizedCrop`` + ``RandomHorizontalFlip``, ``ColorJitter``, ``RandomGrayscale`` and
``RandomErasing``, on one (B, 3, S, S) float batch; median milliseconds per batch over
``--repeats`` runs after a warm-up. Writes benchmarks/results/augment.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, write_results  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (kernel selection, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    import kornia.augmentation as K
    import torch

    from solo_poisoncam.ops.masks import apply_masks
    from solo_poisoncam.ops.occlusion import box_masks, random_occlusion_boxes
    from solo_poisoncam.ssl.augment import color_jitter, random_grayscale, random_resized_crop

    dev = torch.device(args.device)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    s = args.size
    k_crop = torch.nn.Sequential(K.RandomResizedCrop((s, s), scale=(0.2, 1.0)), K.RandomHorizontalFlip()).to(dev)
    k_jitter = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8).to(dev)
    k_gray = K.RandomGrayscale(p=0.2).to(dev)
    k_erase = K.RandomErasing(scale=(0.02, 0.25), ratio=(1.0, 1.0), value=0.0, p=0.5).to(dev)

    def ours_occlusion():
        boxes = random_occlusion_boxes(args.batch, s, s, (0.02, 0.25), 0.5).to(dev)
        return apply_masks(x, box_masks(boxes, s, s)[:, None], fill=0.0)

    jobs = [
        ("random resized crop + flip", lambda: random_resized_crop(x, s, (0.2, 1.0)), lambda: k_crop(x)),
        ("colour jitter (p 0.8)", lambda: color_jitter(x, 0.4, 0.4, 0.4, 0.1, p=0.8), lambda: k_jitter(x)),
        ("grayscale (p 0.2)", lambda: random_grayscale(x, 0.2), lambda: k_gray(x)),
        ("square occlusion (p 0.5, area 2-25%)", ours_occlusion, lambda: k_erase(x)),
    ]
    rows, raw = [], {}
    with torch.no_grad():
        for name, ours, theirs in jobs:
            a, b = timed(ours, args.repeats), timed(theirs, args.repeats)
            raw[name] = {"ours_ms": round(a, 3), "kornia_ms": round(b, 3)}
            rows.append([name, f"{a:.2f}", f"{b:.2f}", f"{b / a:.1f}x"])
    table = markdown_table(["op", "hand-written ms", "kornia.augmentation ms", "kornia / hand-written"], rows)
    settings = {"batch": args.batch, "size": args.size, "repeats": args.repeats, "device": str(dev),
                "kornia": __import__("kornia").__version__}
    path = write_results("augment", environment(), settings,
                         {f"Median ms per ({args.batch}, 3, {s}, {s}) batch": table}, raw)
    print(table)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
