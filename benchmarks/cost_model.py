"""A cost model of both detectors at ImageNet-100 scale (126,689 images at 224 px, K = 1,000 clusters, a ResNet-18
threat model): the passes each stage makes, from each detector's own count rules at its defaults, the
throughput of those passes measured on this machine, and the projected time, here and on one GPU whose
throughput is an input (an assumption until ``benchmarks/gpu_check.sh`` measures it). docs/cost-model.md
reads this file's table.

    python benchmarks/cost_model.py --name cost-model

Passes counted (one image through the network is one pass):
- PoisonCAM: features (N); per masked image, its own-cluster and window-drop forwards (2 per pass) and one
  forward per mask (``forward_counts.py``: screen, coarse, fine, refine); the flip test (``flip_top`` x
  ``flip_images``); the verdict's coherence and in-place flip rates of the candidates and the null windows
  (4 x ``flip_top`` x ``flip_images``); match removal makes no network pass: it is a pattern search, its
  multiply-adds counted for about 100 confirmed windows and their rescaled copies, the exact search on the
  ``--survivors`` share of images its block-mean bound keeps.
- PatchSearch (``detect/patchsearch.py``, ``detect/classifier.py`` at their defaults): features (N); Grad-CAM
  (one forward and backward per image); the iterative search (every image it scores x ``test_images_size``
  flip images; the number scored follows its pruning rule, 2 per cluster per round); the poison classifier
  (``models`` x ``iters`` x ``batch_size`` training passes, then every image through each model).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, print_tables, write_results  # noqa: E402
from forward_counts import counts  # noqa: E402

N, K, SIDE = 126_689, 1000, 224


def patchsearch_scored(k: int, per_round: int, remove: float) -> int:
    """Images PatchSearch's iterative search scores with K clusters of many images each (its pruning rule:
    each round every candidate cluster gives ``per_round``, then the lowest ``int(remove x candidates)`` go)."""
    candidates, scored = k, 0
    while candidates:
        scored += per_round * candidates
        cut = int(remove * candidates)
        candidates = candidates - cut if cut else 0
    return scored


def verdict_mac(candidates: int, null: int, t: int) -> float:
    """Multiply-adds of the verdict's repetition searches of ``candidates`` + ``null`` windows of side ``t`` in
    the candidates' images at SIDE px: by window and core (half side), and 25 parts of side t / 4."""
    def search(count: int, side: int) -> float:
        return count * candidates * (SIDE - side + 1) ** 2 * 3 * side * side * 2
    windows = candidates + null
    return search(windows, t) + search(windows, t // 2) + search(25 * windows, math.ceil(t / 4))


def passes(n: int, k: int, survivors: float):
    """{stage: (kind, passes)}: kind "fwd" (ResNet-18 forward), "fwdbwd" (forward and backward), "clf-fwd" /
    "clf-train" (PatchSearch's poison classifier), "mac" (pattern-search multiply-adds). ``survivors``: the share
    of images the match's bound leaves to the exact search."""
    from solo_poisoncam.detect.classifier import ClassifierConfig
    from solo_poisoncam.detect.config import MatchConfig, PatchSearchConfig, PoisonCamConfig
    from solo_poisoncam.detect.verdict import bound_block

    pc, ps, clf, mc = PoisonCamConfig(), PatchSearchConfig(), ClassifierConfig(), MatchConfig()
    stages, _, _, images = counts(n, k, pc.screen)
    flips = pc.flip_top * pc.flip_images
    # match: about 100 confirmed windows of a 50 px trigger (its side at 224 px), each also at 8 other scales,
    # bounded at every position of every image by block means (verdict.block_bound: one correlation over
    # 3 x 3 blocks), then searched exactly (two correlations over every pixel) in the images the bound keeps
    t, patterns = 50, 100 * (1 + len(mc.scales))
    grid = t // bound_block(t, t)
    positions = n * patterns * (SIDE - t + 1) ** 2
    poisoncam = {"features": ("fwd", n), "cluster and drop forwards": ("fwd", 2 * (images["masked"] + images["fine"])),
                 **{f"masking: {s}": ("fwd", v) for s, v in stages.items()},
                 "flip": ("fwd", flips), "verdict": ("fwd", 4 * flips),
                 # its repetition searches: the candidates' windows, their cores and the null windows in the
                 # candidates' images, and 25 parts of a quarter side each (exact, no bound: an upper bound)
                 "verdict: pattern search": ("mac", verdict_mac(pc.flip_top, pc.null_windows, t)),
                 "match: block bound": ("mac", positions * 3 * grid * grid),
                 "match: exact search of the kept images": ("mac", survivors * positions * 3 * t * t * 2)}
    scored = patchsearch_scored(k, ps.samples_per_iteration, ps.remove_per_iteration)
    patchsearch = {"features": ("fwd", n), "gradcam": ("fwdbwd", n),
                   "search": ("fwd", scored * ps.test_images_size),
                   "classifier: training": ("clf-train", clf.models * clf.iters * clf.batch_size),
                   "classifier: scoring": ("clf-fwd", clf.models * n)}
    return {"PoisonCAM": poisoncam, "PatchSearch": patchsearch}, scored


def rate(fn, batch: int, seconds: float) -> float:
    """Images per second of ``fn()`` on ``batch`` images, timed for about ``seconds`` after one warm-up call."""
    fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += batch
    return done / (time.perf_counter() - start)


def measured(seconds: float, batch: int = 32):
    """Passes per second on this machine at 224 px: ResNet-18 forward and forward+backward (the threat
    model), the poison classifier's, and the pattern search's multiply-adds per second (exact search)."""
    from solo_poisoncam.detect.classifier import PoisonNet
    from solo_poisoncam.detect.verdict import Pool, crop_errors
    from solo_poisoncam.models.backbones import create_backbone

    torch.manual_seed(0)
    x = torch.rand(batch, 3, SIDE, SIDE)
    net, clf = create_backbone("resnet18").eval(), PoisonNet()
    out = {}
    with torch.no_grad():
        out["fwd"] = rate(lambda: net(x), batch, seconds)
        out["clf-fwd"] = rate(lambda: clf(x), batch, seconds)

    def train(model):
        def step():
            model.zero_grad()
            model(x).float().sum().backward()
        return step

    out["fwdbwd"] = rate(train(net.train()), batch, seconds)
    out["clf-train"] = rate(train(clf.train()), batch, seconds)
    t, pool = 50, Pool(torch.rand(8, 3, SIDE, SIDE))
    pattern = torch.rand(4, 3, t, t)
    per_call = 8 * 4 * (SIDE - t + 1) ** 2 * 3 * t * t * 2
    out["mac"] = rate(lambda: crop_errors(pattern, pool), 1, seconds) * per_call
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="cost-model")
    p.add_argument("--seconds", type=float, default=10.0, help="timing per measured rate")
    p.add_argument("--gpu-fwd", type=float, default=20000, help="assumed: ResNet-18 forwards/s at 224 px on one GPU")
    p.add_argument("--gpu-fwdbwd", type=float, default=6000, help="assumed: ResNet-18 forward+backward/s, one GPU")
    p.add_argument("--gpu-mac", type=float, default=50e12, help="assumed: pattern-search multiply-adds/s, one GPU")
    p.add_argument("--survivors", type=float, default=0.026,
                   help="share of images the match's block bound keeps for the exact search (0.026: measured on "
                        "the CIFAR-10 generator-faithful test model at 32 px, docs/results.md)")
    args = p.parse_args(argv)
    here = measured(args.seconds)
    # the poison classifier is small: on a GPU it is assumed as fast per image as the threat model's forward
    gpu = {"fwd": args.gpu_fwd, "fwdbwd": args.gpu_fwdbwd, "clf-fwd": args.gpu_fwd, "clf-train": args.gpu_fwdbwd,
           "mac": args.gpu_mac}
    table, raw = [], {}
    det_passes, scored = passes(N, K, args.survivors)
    totals = {}
    for det, stages in det_passes.items():
        cpu_s = gpu_s = 0.0
        for stage, (kind, count) in stages.items():
            c, g = count / here[kind], count / gpu[kind]
            cpu_s, gpu_s = cpu_s + c, gpu_s + g
            unit = "multiply-adds" if kind == "mac" else {"fwd": "forwards", "fwdbwd": "forward+backward",
                                                           "clf-fwd": "classifier forwards",
                                                           "clf-train": "classifier training passes"}[kind]
            table.append([det, stage, f"{count:,.3g}" if kind == "mac" else f"{count:,}", unit,
                          f"{c / 3600:,.1f}", f"{g / 60:,.1f}"])
        totals[det] = (cpu_s, gpu_s)
        table.append([f"**{det}**", "**total**", "", "", f"**{cpu_s / 3600:,.1f}**", f"**{gpu_s / 60:,.1f}**"])
        raw[det] = {s: {"kind": k, "count": c} for s, (k, c) in stages.items()}
    rates = [[k, f"{v:,.3g}" if k == "mac" else f"{v:,.1f}", f"{gpu[k]:,.3g}"] for k, v in here.items()]
    tables = {
        f"Measured on {environment()['device']} at {SIDE} px (batch 32), and the GPU rates assumed":
            markdown_table(["pass", "per second here", "assumed on one GPU"], rates),
        f"ImageNet-100: {N:,} images, K = {K:,}, {SIDE} px, ResNet-18 (PatchSearch scores {scored:,} images)":
            markdown_table(["detector", "stage", "passes", "unit", "hours here", "minutes on one GPU (assumed)"],
                           table),
    }
    settings = {"n": N, "k": K, "side": SIDE, "gpu_assumed": gpu, "seconds": args.seconds,
                "survivors": args.survivors}
    path = write_results(args.name, environment(), settings, tables,
                         {"measured": here, "gpu_assumed": gpu, "passes": raw, "totals": totals})
    return print_tables(tables, path)


if __name__ == "__main__":
    raise SystemExit(main())
