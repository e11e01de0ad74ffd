"""How detection cost grows with the number of images and their side: PoisonCAM (its defaults) and PatchSearch
on the same threat model, one after the other in one run, each stage's seconds, masked forwards per image and
peak memory.

    python benchmarks/bench_scaling.py --name scaling                       # Fashion-MNIST 5k, 20k, 60k at 32 px
    python benchmarks/bench_scaling.py --cifar PATH/cifar10_subset.npz --only cf-32 cf-64 --name scaling-cifar
    python benchmarks/bench_scaling.py --only fm-224 --device cuda --amp bf16 --name gpu-scaling-224  # gpu_check.sh

Fashion-MNIST: the 12 px patch on every image of class 0 (a backdoor BYOL learns within 100-250 steps on
this CPU), BYOL cnn_small, the number of epochs falling with N so every model gets 120-240 steps.
CIFAR-10 (``--cifar``): the generator-faithful folder of bench_generator.py's test model ``test-cf-r100-s1``
(made there if missing) at 32 px, and the same files served at 64 px (``poison --reserve``) with a model
trained at 64 px. ``fm-224``: Fashion-MNIST upscaled to sides 200-320 (``scripts/make_sized_folder.py``),
poisoned as SSL-Backdoor's generator does (an 80 px HTBA trigger on all of class 3, every file JPEG) and
served at 224 px to a ResNet-18 (meant for a GPU: ``benchmarks/gpu_check.sh``; ``--dry-run`` checks its
commands at toy scale on a CPU). Every detection starts from an empty cache, so each stage is computed here;
the threat models are reused from ``--root``. Both detectors at their defaults: PatchSearch's flip set of 1,000 images
and its port's classifier (3 x 1,000 iterations; docs/design.md, PatchSearch port).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from solo_poisoncam.detect.cam import REFINE_FORWARDS  # noqa: E402

from bench_generator import PRETRAIN, TEST_CIFAR, model, sh  # noqa: E402
from common import environment, markdown_table, print_tables, stage_seconds, write_results  # noqa: E402

FMNIST = ["--attack", "patch", "--patch-size", "12", "--target", "0", "--rate", "1.0", "--seed", "0"]
SCALES = {  # name: data arguments, side, pretrain epochs
    "fm-5k": {"data": ["--dataset", "fashion-mnist", "--num-samples", "5000"], "size": 32, "epochs": 6},
    "fm-20k": {"data": ["--dataset", "fashion-mnist", "--num-samples", "20000"], "size": 32, "epochs": 2},
    "fm-60k": {"data": ["--dataset", "fashion-mnist"], "size": 32, "epochs": 1},
    "cf-32": {"cifar": "test-cf-r100-s1", "size": 32},
    "cf-64": {"cifar": "test-cf-r100-s1", "size": 64, "epochs": 5},
    "fm-224": {"folder": ["--fashion-mnist", "--num-samples", "3000", "--num-val-samples", "300", "--min-side", "200",
                          "--max-side", "320", "--seed", "3"], "size": 224, "epochs": 3, "backbone": "resnet18",
               "trigger_seed": 12, "width": 80, "target": 3, "rate": 1.0},
}
DETECTORS = {"poisoncam": ["--method", "poisoncam"], "patchsearch": ["--method", "patchsearch"]}
STAGES = ["features", "kmeans", "screen", "cam-coarse", "cam", "refine", "flip", "verdict", "match",
          "gradcam", "search", "classifier"]


def threat_model(name: str, spec: Dict[str, Any], root: Path, cifar: str | None, py: List[str],
                 folder_samples: int | None = None, accelerator: str = "auto") -> Path:
    """The poisoned run folder of a scale (poison manifest and threat model), made once."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    manifest = run / "poisoned"
    if "folder" in spec:  # an image folder of differing sizes, poisoned as the generator does
        src = run / "source"
        if not src.is_dir():
            args = list(spec["folder"])
            if folder_samples:
                args[args.index("--num-samples") + 1] = str(folder_samples)
                args[args.index("--num-val-samples") + 1] = str(max(10, folder_samples // 10))
            sh(run / "source.log", sys.executable, Path(__file__).resolve().parent.parent / "scripts"
               / "make_sized_folder.py", *args, "--out", src)
        if not (manifest / "manifest.json").is_file():
            sh(run / "poison.log", *py, "poison", "--write-folder", "--dataset", "folder", "--root", src,
               "--target", str(spec["target"]), "--rate", str(spec["rate"]), "--trigger-seed",
               str(spec["trigger_seed"]), "--patch-size", str(spec["width"]), "--size", str(spec["size"]),
               "--seed", "0", "--out", manifest)
    elif "cifar" in spec:  # bench_generator's test model: its folder, poison and 32 px threat model
        model(spec["cifar"], TEST_CIFAR[spec["cifar"]], root, [], False, cifar)
        base = root / spec["cifar"]
        if spec["size"] == 32:
            return base
        if not (manifest / "manifest.json").is_file():
            sh(run / "poison.log", *py, "poison", "--reserve", base / "poisoned" / "manifest.json",
               "--size", str(spec["size"]), "--out", manifest)
    else:
        if not (manifest / "manifest.json").is_file():
            sh(run / "poison.log", *py, "poison", *spec["data"], "--size", str(spec["size"]), *FMNIST,
               "--out", manifest)
    if not (run / "threat-model" / "last.ckpt").is_file():
        sh(run / "pretrain.log", *py, "pretrain", "--poison", manifest / "manifest.json", *PRETRAIN,
           "--backbone", spec.get("backbone", "cnn_small"), "--epochs", str(spec["epochs"]), "--batch-size", "256",
           "--seed", "0", "--accelerator", accelerator, "--out", run / "threat-model", "--quiet")
    return run


def detections(name: str, run: Path, root: Path, py: List[str], extra: List[str],
               chosen: List[str]) -> Dict[str, Any]:
    """The ``chosen`` detectors on one threat model, each from an empty cache of its own (``extra``: detect
    options)."""
    out = {}
    for det in chosen:
        args = DETECTORS[det]
        folder = root / name / f"scaling-{det}"
        if not (folder / "metrics.json").is_file():
            cache = root / name / f"scaling-{det}-cache"
            shutil.rmtree(cache, ignore_errors=True)
            sh(root / name / f"scaling-{det}.log", *py, "detect", "--ckpt", run / "threat-model" / "last.ckpt",
               "--manifest", run / "poisoned" / "manifest.json", "--out", folder, "--cache", cache, "--quiet",
               *args, *extra)
        out[det] = json.loads((folder / "metrics.json").read_text())
    backdoor = run / "threat-model" / "backdoor.json"
    out["backdoor"] = json.loads(backdoor.read_text()) if backdoor.is_file() else None
    return out


def rows(results: List[Dict[str, Any]]):
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    main, stages = [], []
    for r in results:
        b = r["backdoor"]
        strength = "-" if b is None else ("learned" if b["learned"] else "not learned") + (
            ", targeted" if b.get("targeted") else ", not targeted")
        for det in [d for d in DETECTORS if d in r]:
            m, t = r[det]["metrics"], r[det]["timings"]
            n = t["images"]
            secs = {k: v for k, v in t["stage_compute_s"].items() if v is not None}
            total = stage_seconds(t)
            fwd = (t.get("masked_forwards") or 0) + REFINE_FORWARDS * (t.get("refined_windows") or 0)
            v = m.get("verdict")
            main.append([r["name"], f"{n:,}", str(t["image_side"]), strength if det == "poisoncam" else "",
                         det, ("found" if v["found"] else "none") if v else "-", f"{m['num_removed']:,}",
                         fmt(m.get("precision")), fmt(m.get("recall")), f"{total:.0f}",
                         f"{1000 * total / n:.1f}", f"{fwd / n:.1f}" if det == "poisoncam" else "-",
                         f"{max(t.get('peak_rss_mb', {}).values(), default=0):,.0f}"])
            stages.append([r["name"], det, ", ".join(f"{k} {secs[k]:.0f}" for k in STAGES if k in secs),
                           ", ".join(f"{k} {v:,.0f}" for k, v in t.get("peak_rss_mb", {}).items())])
    return main, stages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", default=["fm-5k", "fm-20k", "fm-60k"], choices=list(SCALES))
    p.add_argument("--cifar", default=None, help="the CIFAR-10 subset .npz (the cf-* scales)")
    p.add_argument("--root", default="runs/bench-generator", help="run folders (shared with bench_generator.py)")
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    p.add_argument("--device", default=None, help="detect --device (default: cuda when available)")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="detect --amp")
    p.add_argument("--folder-samples", type=int, default=None, help="fm-224: this many training images instead")
    p.add_argument("--dry-run", action="store_true",
                   help="fm-224's commands at toy scale on a CPU (64 px, cnn_small, 1 epoch, K = 10; numbers "
                        "meaningless)")
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    extra = ["--amp", args.amp] + (["--device", args.device] if args.device else [])
    if args.dry_run:
        SCALES["fm-224"].update(size=64, backbone="cnn_small", epochs=1, width=24)
        extra += ["--set", "num_clusters=10"]
    accelerator = "cpu" if args.device == "cpu" else "auto"
    py = [sys.executable, "-m", "solo_poisoncam.cli"]
    env, root = environment(), Path(args.root)
    results = []
    for name in args.only:
        spec = SCALES[name]
        run = threat_model(name, spec, root, args.cifar, py, args.folder_samples, accelerator)
        results.append({"name": name, **detections(name, run, root, py, extra, args.detectors)})
    main_rows, stage_rows = rows(results)
    tables = {
        f"Cost by scale on {env['device']} (one detection each, empty caches; seconds = the sum of the stages)":
            markdown_table(["scale", "images", "px", "backdoor", "detector", "verdict", "removed", "precision",
                            "recall", "seconds", "s / 1k images", "masked forwards / image", "peak MiB"], main_rows),
        "Seconds and peak memory (MiB) per stage": markdown_table(["scale", "detector", "seconds", "peak MiB"],
                                                                  stage_rows),
    }
    settings = {"scales": {k: SCALES[k] for k in args.only}, "fmnist_attack": FMNIST, "pretrain": PRETRAIN,
                "detectors": DETECTORS, "detect": extra, "folder_samples": args.folder_samples}
    return print_tables(tables, write_results(args.name, env, settings, tables, results))


if __name__ == "__main__":
    sys.exit(main())
