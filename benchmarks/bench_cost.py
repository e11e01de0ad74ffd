"""Cost of detection: time per stage, images/s, masked forwards/s, and the masking overhead.

    python benchmarks/bench_cost.py --quick          # CPU: cnn_small at 32 px
    python benchmarks/bench_cost.py                  # full: meant for a GPU (ResNet-18 at 32 and 224 px)
    python benchmarks/bench_cost.py --device cuda --amp bf16 --sizes 5000 10000 20000   # benchmarks/gpu_check.sh

The masking overhead is the time of the whole cluster-activation-masking stage divided by the
time of plain forward passes over the same number of images in the same chunk sizes (the
unavoidable model cost): the target is < 1.1x. Also how time grows with the number of images
and of masks, and both detectors end to end (features to removed list) on the same model and images.
Writes benchmarks/results/cost[-quick].md and .json. Timings are measured, never
asserted by tests.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, write_results  # noqa: E402


def threat_model(backbone: str, side: int, device: torch.device):
    from solo_poisoncam.models.backbones import create_backbone
    from solo_poisoncam.models.threat_model import ThreatModel

    torch.manual_seed(0)
    kwargs = {"cifar_stem": True} if backbone == "resnet18-cifar" else {}
    name = "resnet18" if backbone.startswith("resnet18") else backbone
    cfg = {"backbone": {"name": name, "kwargs": kwargs}, "data": {"image_size": side}}
    return ThreatModel(create_backbone(name, **kwargs), (0.5,) * 3, (0.25,) * 3, cfg, "random-init").eval().to(device)


def data(n: int, side: int):
    from solo_poisoncam.data import build_dataset

    resize = "pad" if side == 32 else "resize"
    return build_dataset("fashion-mnist", num_samples=n, size=side, resize=resize)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def pure_forward_seconds(model, head, count: int, side: int, chunk: int, device, amp: str = "off") -> float:
    """Plain forward passes of ``count`` images through backbone + head, chunked like the masking stage."""
    from solo_poisoncam.detect.cam import ClusterActivation
    from solo_poisoncam.engine.runner import Runner

    autocast = Runner(device, progress=False).autocast
    act = ClusterActivation(model, head.to(device)).eval()
    x = torch.rand(min(chunk, count), 3, side, side, device=device)
    c = torch.zeros(len(x), dtype=torch.long, device=device)
    act(x, c)
    sync(device)
    start = time.perf_counter()
    done = 0
    while done < count:
        b = min(chunk, count - done)
        with autocast(amp):
            act(x[:b], c[:b])
        done += b
    sync(device)
    return time.perf_counter() - start


def one(backbone: str, side: int, n: int, stride: float, device, forward_batch: int, amp: str) -> Dict[str, Any]:
    from solo_poisoncam.detect.cam import cluster_activation
    from solo_poisoncam.detect.config import DetectConfig
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.detect.poisoncam import build_masks
    from solo_poisoncam.engine.runner import Runner

    model = threat_model(backbone, side, device)
    ds = data(n, side)
    # one pass (coarse_stride None): the masking overhead is measured for exactly this mask set
    cfg = DetectConfig.from_dict({"occluder_stride": stride, "coarse_stride": None, "remove": "none", "score": "drop",
                                  "forward_batch": forward_batch, "amp": amp})
    runner = Runner(device, progress=False)
    r = run_detection(model, ds, cfg, runner)
    t = r.timings
    masks = build_masks(cfg.poisoncam, side)
    m = masks.shape[0]
    act = cluster_activation(model, r.head_state, cfg.head_temperature).to(device)
    pure = pure_forward_seconds(model, act.head, n * (m + 2), side, forward_batch, device, amp)
    return {"backbone": backbone, "side": side, "images": n, "masks": m, "features_s": t["features_s"],
            "features_images_per_s": t.get("features_images_per_s"), "kmeans_s": t["kmeans_s"],
            "masking_s": t["masking_s"], "masked_forwards_per_s": t["masked_forwards_per_s"],
            "mask_apply_over_forward": t["masking_overhead"], "pure_forward_s": round(pure, 3),
            "masking_stage_over_pure_forward": round(t["masking_s"] / pure, 3), "total_s": t["total_s"]}


def versus(backbone: str, side: int, n: int, device, forward_batch: int, amp: str) -> Dict[str, Any]:
    """Both detectors end to end (features to removed list) at their defaults, same model and images.

    PoisonCAM removes by its default removal with ``force_remove`` (a random-init model carries no
    backdoor, and its verdict would otherwise skip removal and flatter it); PatchSearch trains its
    poison classifier at its defaults, as in its paper."""
    from solo_poisoncam.detect.config import DetectConfig
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.engine.runner import Runner

    model = threat_model(backbone, side, device)
    ds = data(n, side)
    row: Dict[str, Any] = {"backbone": backbone, "side": side, "images": n}
    for method, extra in (("poisoncam", {"force_remove": True}), ("patchsearch", {})):
        cfg = DetectConfig.from_dict({"method": method, "forward_batch": forward_batch, "amp": amp, **extra})
        t = run_detection(model, ds, cfg, Runner(device, progress=False), progress=False).timings
        row[method] = {"total_s": t["total_s"], "remove": cfg.remove,
                       "stages": {k: v for k, v in t.items() if k.endswith("_s") and isinstance(v, (int, float))
                                  and "per_s" not in k}}
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="numbers of images (default per scale)")
    p.add_argument("--backbones", nargs="+", default=None, help="NAME:PX pairs, e.g. cnn_small:32 resnet18:224")
    p.add_argument("--name", default=None)
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.quick:
        sizes, grid, backbones, fb = [1000, 2000, 4000], [1 / 4, 1 / 8, 1 / 16], [("cnn_small", 32)], 2048
    else:
        sizes, grid, backbones, fb = [5000, 10000, 20000], [1 / 4, 1 / 8, 1 / 16], \
            [("cnn_small", 32), ("resnet18-cifar", 32), ("resnet18", 224)], 4096
    if args.sizes:
        sizes = args.sizes
    if args.backbones:
        backbones = [(b.split(":")[0], int(b.split(":")[1])) for b in args.backbones]
    env = environment()
    rows: List[Dict[str, Any]] = []
    for backbone, side in backbones:
        for n in sizes:  # growth with the number of images, at the default 49 masks
            rows.append(one(backbone, side, n, 1 / 8, device, fb, args.amp))
            print(rows[-1], flush=True)
        for stride in (grid[0], grid[2]):  # growth with the number of masks
            rows.append(one(backbone, side, sizes[0], stride, device, fb, args.amp))
            print(rows[-1], flush=True)
    vs = [versus(backbone, side, n, device, fb, args.amp) for backbone, side in backbones[:1] for n in sizes]
    for r in vs:
        print(r, flush=True)
    head = ["backbone", "px", "images", "masks", "features s", "features img/s", "k-means s", "masking s",
            "masked fwd/s", "mask apply / fwd", "masking stage / pure fwd", "total s"]
    table = [[r["backbone"], str(r["side"]), str(r["images"]), str(r["masks"]), f"{r['features_s']:.2f}",
              f"{r['features_images_per_s'] or 0:.0f}", f"{r['kmeans_s']:.2f}", f"{r['masking_s']:.1f}",
              f"{r['masked_forwards_per_s']:.0f}", f"{r['mask_apply_over_forward']:.3f}",
              f"{r['masking_stage_over_pure_forward']:.3f}x", f"{r['total_s']:.1f}"] for r in rows]
    tables = {f"PoisonCAM detection cost on {env['device']} (random-init backbones; remove=none, score=drop)":
              markdown_table(head, table)}
    vs_head = ["backbone", "px", "images", "PoisonCAM s", "PatchSearch s", "PoisonCAM / PatchSearch",
               "PoisonCAM stages (s)", "PatchSearch stages (s)"]
    stages = lambda r: ", ".join(f"{k[:-2]} {v:.1f}" for k, v in r["stages"].items()  # noqa: E731
                                 if k not in ("mask_s", "forward_s", "total_s"))
    vs_table = [[r["backbone"], str(r["side"]), str(r["images"]), f"{r['poisoncam']['total_s']:.1f}",
                 f"{r['patchsearch']['total_s']:.1f}",
                 f"{r['poisoncam']['total_s'] / max(r['patchsearch']['total_s'], 1e-9):.2f}x",
                 stages(r["poisoncam"]), stages(r["patchsearch"])] for r in vs]
    tables[f"PoisonCAM vs PatchSearch on {env['device']}, amp {args.amp}: end to end, features to removed list "
           "(defaults; PoisonCAM remove=" + (vs[0]["poisoncam"]["remove"] if vs else "?") + " forced, PatchSearch "
           "its classifier)"] = markdown_table(vs_head, vs_table)
    name = args.name or ("cost-quick" if args.quick else "cost")
    path = write_results(name, env, {"sizes": sizes, "strides": grid, "backbones": backbones, "amp": args.amp,
                                     "forward_batch": fb, "device": str(device)}, tables, {"rows": rows, "versus": vs})
    print(markdown_table(head, table))
    print(markdown_table(vs_head, vs_table))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
