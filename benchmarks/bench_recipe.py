"""Threat-model recipes on colour photographs: which CPU training settings plant a *targeted* backdoor?

    python benchmarks/bench_recipe.py --data PATH/cifar10_subset.npz                 # every setting, in order
    python benchmarks/bench_recipe.py --data PATH/cifar10_subset.npz --settings byol-12px-r1.0 --seeds 0 1 2

PATH is any CIFAR-style ``.npz`` (``x_train``/``y_train``/``x_test``/``y_test``; the ``npz``
dataset). Each (setting, seed) is one run folder under ``--root`` (poison -> threat model ->
backdoor check), reused when it exists, so an interrupted sweep resumes. For every run the table
gives training time and backdoor strength beside a random-init reference of the same
architecture: the cluster view a detector sees, kNN-ASR on the as-trained bank, and the
attacker's criterion, the linear-probe ASR (probe on 10% of the clean training labels, clean
features), patched vs a same-size control patch. "targeted" = probe ASR margin >= 0.30 and above
the reference's margin (``eval/backdoor.py: verdict``). Writes benchmarks/results/<name>.md and .json (default ``recipe-cifar10``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, write_results  # noqa: E402

BASE: Dict[str, Any] = {
    "data": {"dataset": "npz"},
    "poison": {"attack": "patch", "trigger": {"kind": "htba", "seed": 10}, "size": 12, "target": 2, "rate": 1.0,
               "rate_of": "target", "targeted": True},
    "pretrain": {"method": "byol", "backbone": "cnn_small", "epochs": 20, "batch_size": 256, "lr": 0.001},
    "eval": {"val_images": None},
}

# setting -> overrides of BASE (one section at a time; the name says what differs)
SETTINGS: Dict[str, Dict[str, Any]] = {
    "byol-12px-r1.0": {},
    "byol-12px-r0.5": {"poison": {"rate": 0.5}},
    "byol-12px-r1.0-cos40": {"pretrain": {"epochs": 40, "scheduler": "cosine", "warmup_epochs": 2, "lr": 0.002}},
    "byol-cnn-12px-r1.0-cos": {"pretrain": {"backbone": "cnn", "scheduler": "cosine", "warmup_epochs": 2, "lr": 0.002}},
    "simclr-12px-r1.0": {"pretrain": {"method": "simclr"}},
    "simsiam-12px-r1.0": {"pretrain": {"method": "simsiam"}},
    "byol-7px-r1.0-cos40": {"poison": {"size": 7},
                            "pretrain": {"epochs": 40, "scheduler": "cosine", "warmup_epochs": 2, "lr": 0.002}},
    "byol-16px-r1.0": {"poison": {"size": 16}},
    "byol-12px-r1.0-crop0.08": {"pretrain": {"crop_scale": [0.08, 1.0]}},
    "byol-16px-r0.5": {"poison": {"size": 16, "rate": 0.5}},
    "byol-16px-r0.1": {"poison": {"size": 16, "rate": 0.1}},
    # torchvision's ResNet-18 with its ImageNet stem (stride-2 conv + max-pool: 8 x 8 after the stem at 32 px;
    # the CIFAR stem, no downsampling before layer 2, costs far more per image and was not tried)
    "byol-resnet18-16px-r1.0": {"poison": {"size": 16}, "pretrain": {"backbone": "resnet18"}},
    # the detection tables' recipe (16 px at random places in 10-90% of the side, 20 epochs), and the same
    # trained five times longer with warm-up and cosine decay (about 13 min on 2 cores): does length make
    # the backdoor targeted more often?
    "byol-16px-wide-r1.0": {"poison": {"size": 16, "region": [0.1, 0.9]}},
    "byol-16px-wide-r0.5": {"poison": {"size": 16, "region": [0.1, 0.9], "rate": 0.5}},
    "byol-16px-wide-r0.1": {"poison": {"size": 16, "region": [0.1, 0.9], "rate": 0.1}},
    "byol-16px-wide-r1.0-cos100": {"poison": {"size": 16, "region": [0.1, 0.9]},
                                   "pretrain": {"epochs": 100, "scheduler": "cosine", "warmup_epochs": 5,
                                                "lr": 0.002}},
}


def deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_one(setting: str, seed: int, data: str, root: Path, progress: bool) -> Dict[str, Any]:
    from solo_poisoncam.io import read_json, write_json
    from solo_poisoncam.pipeline.run import Chain

    cfg = deep_merge(deep_merge(BASE, {"data": {"root": data}}), SETTINGS[setting])
    cfg.update(seed=seed, name=f"{setting}-s{seed}")
    folder = root / cfg["name"]
    done = folder / "recipe.json"
    if done.is_file():
        return read_json(done)
    chain = Chain(cfg, folder, progress=progress, log=lambda s: print(f"  {cfg['name']} {s}", flush=True))
    chain.stage("poison", chain.poison)
    start = time.perf_counter()
    ckpt = chain.stage("threat model", chain.threat)
    train_s = time.perf_counter() - start
    bd = chain.stage("backdoor check", lambda: chain.backdoor(ckpt))
    result = {"setting": setting, "seed": seed, "config": cfg, "train_s": round(train_s, 1),
              "checkpoint": str(ckpt), "backdoor": bd}
    write_json(done, result)
    return result


def row(r: Dict[str, Any]) -> List[str]:
    from solo_poisoncam.eval.backdoor import describe_outcome

    bd, c = r["backdoor"], r["config"]
    t, ref = bd["threat"], bd["reference"]
    p = c["pretrain"]
    sched = p.get("scheduler", "none") + (f"+{p['warmup_epochs']}wu" if p.get("warmup_epochs") else "")
    pct = lambda x: f"{x:.0%}"  # noqa: E731
    return [r["setting"], str(r["seed"]), p["method"], p["backbone"], str(p["epochs"]), f"{p['lr']:g} {sched}",
            str(c["poison"]["size"]), f"{c['poison']['rate']:g} ({bd['num_poisons']})", f"{r['train_s'] / 60:.1f}",
            f"{pct(t['purity'])} / {pct(ref['purity'])}",
            f"{pct(t['patched_to_poison_cluster'])} ({pct(t['control_to_poison_cluster'])}) / "
            f"{pct(ref['patched_to_poison_cluster'])}",
            f"{pct(t['knn_asr_patched'])} ({pct(t['knn_asr_control'])})",
            f"**{pct(t['probe_asr_patched'])}** ({pct(t['probe_asr_control'])}) / "
            f"{pct(ref['probe_asr_patched'])} ({pct(ref['probe_asr_control'])})",
            every_label(t, ref),
            f"{t['probe_clean_acc1']:.1%} / {ref['probe_clean_acc1']:.1%}", describe_outcome(bd)]


def every_label(t: Dict[str, Any], ref: Dict[str, Any]) -> str:
    """The probe on every label (checks since 2026-12-03; 'n/a' in older run folders)."""
    if "probe_all_asr_patched" not in t:
        return "n/a"
    return (f"{t['probe_all_asr_patched']:.0%} ({t['probe_all_asr_control']:.0%}) / "
            f"{ref['probe_all_asr_patched']:.0%} ({ref['probe_all_asr_control']:.0%})")


HEAD = ["setting", "seed", "method", "backbone", "epochs", "lr, schedule", "trigger px", "rate of target (poisons)",
        "train min", "purity (ref)", "patched -> poison cluster (control) / ref", "kNN-ASR (control)",
        "probe ASR (control) / ref (control)", "every label: probe ASR (control) / ref (control)",
        "probe clean acc / ref", "backdoor (criteria that hold)"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CIFAR-style .npz file (x_train, y_train, x_test, y_test)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--root", default="runs/bench-recipe", help="run folders (reused: the sweep resumes)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--name", default="recipe-cifar10")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.data).is_file():
        ap.error(f"--data '{args.data}' does not exist: pass the path of a CIFAR-style .npz file")
    import torch

    from solo_poisoncam.eval.backdoor import TARGETED_MARGIN

    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    results = []
    for setting in args.settings:
        for seed in args.seeds:
            results.append(run_one(setting, seed, args.data, Path(args.root), args.progress))
            table = markdown_table(HEAD, [row(r) for r in results])
            path = write_results(args.name, env, {"base": BASE, "settings": {s: SETTINGS[s] for s in args.settings},
                                                  "targeted_margin": TARGETED_MARGIN, "seeds": args.seeds},
                                 {"Backdoor strength per threat-model recipe (threat / random-init reference)": table},
                                 results)
            print(table.splitlines()[-1], flush=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
