"""Cost of making and applying masks: ms per 1000 RISE masks and per 1000 masked images.

    python benchmarks/bench_masking.py [--device cuda] [--quick]

Times are the best of ``--repeats`` runs after one warm-up, synchronised on CUDA.
"""

from __future__ import annotations

import argparse
import time

import torch

from solo_poisoncam.ops.masks import apply_masks, rise_masks

# (image size, batch, masks per image, RISE grid)
FULL = [(32, 64, 100, 4), (224, 8, 50, 7)]
QUICK = [(32, 16, 50, 4), (224, 4, 16, 7)]


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeats`` runs, after a warm-up."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def run(device: torch.device, configs, repeats: int):
    rows = []
    for size, batch, num_masks, grid in configs:
        g = torch.Generator(device=device).manual_seed(0)
        images = torch.rand(batch, 3, size, size, generator=g, device=device)
        masks = rise_masks(num_masks, size, size, grid=grid, generator=g, device=device)
        n_rise = batch * num_masks  # as many masks as a batch with per-image masks needs
        with torch.inference_mode():
            t_rise = best_time(lambda: rise_masks(n_rise, size, size, grid=grid, generator=g, device=device),
                               device, repeats)
            t_zero = best_time(lambda: apply_masks(images, masks, fill="zero"), device, repeats)
            t_blur = best_time(lambda: apply_masks(images, masks, fill="blur"), device, repeats)
        per_k = 1000.0 * 1000.0  # seconds per item -> ms per 1000 items
        rows.append([str(device), torch.__version__, f"{size}x{size}", str(batch), str(num_masks),
                     f"{t_rise / n_rise * per_k:.1f}", f"{t_zero / (batch * num_masks) * per_k:.1f}",
                     f"{t_blur / (batch * num_masks) * per_k:.1f}"])
    return rows


def print_table(rows) -> None:
    header = ["device", "torch", "image", "batch", "masks/img", "rise ms/1k masks",
              "apply zero ms/1k imgs", "apply blur ms/1k imgs"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller batches (a few seconds on CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"threads={torch.get_num_threads()}" + (f"  gpu={torch.cuda.get_device_name(device)}"
                                                  if device.type == "cuda" else ""))
    print_table(run(device, QUICK if args.quick else FULL, args.repeats))


if __name__ == "__main__":
    main()
