"""Detection quality of PoisonCAM vs PatchSearch, side by side on the same threat models.

    python benchmarks/bench_detection.py --quick              # CPU: Fashion-MNIST, small
    python benchmarks/bench_detection.py                      # full: meant for a GPU
    python benchmarks/bench_detection.py --settings patch-0.5 --seeds 0 1 2 --downstream
    python benchmarks/bench_detection.py --quick --settings cifar-patch16-1.0 --data PATH/cifar10_subset.npz

Each (setting, seed) is one run folder of the chain (poison -> threat model -> backdoor check ->
detect -> [retrain -> evaluate]); folders are reused, so an interrupted benchmark resumes.
Every row states its threat model's backdoor strength beside a random-init reference. The
"clean" setting trains on unpoisoned data and reports how much each defence removes when there
is nothing to find. Writes benchmarks/results/detection-<scale>.md and .json (or --name).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, mean_std, print_tables, stage_seconds, write_results  # noqa: E402

# setting -> run-config overrides (over the embedded demo config)
SETTINGS: Dict[str, Dict[str, Any]] = {
    "patch-0.5": {"poison": {"attack": "patch", "size": 12, "rate": 0.5}},
    # the main setting on 10,000 and 20,000 images (cost: how each stage grows with N)
    "patch-0.5-10k": {"data": {"num_samples": 10000}, "poison": {"attack": "patch", "size": 12, "rate": 0.5}},
    "patch-0.5-20k": {"data": {"num_samples": 20000}, "poison": {"attack": "patch", "size": 12, "rate": 0.5}},
    "patch-1.0": {"poison": {"attack": "patch", "size": 12, "rate": 1.0}},
    "patch-0.1": {"poison": {"attack": "patch", "size": 12, "rate": 0.1}},
    "patch-0.05": {"poison": {"attack": "patch", "size": 12, "rate": 0.05}},
    "patch-0.5-7px": {"poison": {"attack": "patch", "size": 7, "rate": 0.5}},
    "blend": {"poison": {"attack": "blend", "alpha": 0.2, "rate": 0.5}},
    "frequency": {"poison": {"attack": "frequency", "magnitude": 100, "rate": 0.5}},
    "simclr-patch-0.5": {"poison": {"attack": "patch", "size": 12, "rate": 0.5}, "pretrain": {"method": "simclr"}},
    "simsiam-patch-0.5": {"poison": {"attack": "patch", "size": 12, "rate": 0.5}, "pretrain": {"method": "simsiam"}},
    "clean": {},
    # colour photographs (--data: a CIFAR-style .npz): benchmarks/results/recipe-cifar10.md's recipes, BYOL cnn_small
    # 20 epochs on class 2; 16 px planted a targeted backdoor there, 12 px one at the cluster level only
    "cifar-patch16-1.0": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                          "poison": {"attack": "patch", "size": 16, "rate": 1.0, "target": 2}, "pretrain": {"epochs": 20}},
    "cifar-patch16-0.5": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                          "poison": {"attack": "patch", "size": 16, "rate": 0.5, "target": 2}, "pretrain": {"epochs": 20}},
    "cifar-patch16-0.1": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                          "poison": {"attack": "patch", "size": 16, "rate": 0.1, "target": 2}, "pretrain": {"epochs": 20}},
    "cifar-patch16-0.05": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                           "poison": {"attack": "patch", "size": 16, "rate": 0.05, "target": 2}, "pretrain": {"epochs": 20}},
    # the same patch at random places: in the central region (0.25, 0.75) a 16 px patch on 32 px images has one
    # position, so every copy above sits at (8, 8); here it goes anywhere in 10-90% of the side (the patched
    # validation set's region), 10 x 10 positions
    "cifar-patch16-1.0-wide": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                               "poison": {"attack": "patch", "size": 16, "rate": 1.0, "target": 2,
                                          "region": [0.1, 0.9]}, "pretrain": {"epochs": 20}},
    "cifar-patch16-0.5-wide": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                               "poison": {"attack": "patch", "size": 16, "rate": 0.5, "target": 2,
                                          "region": [0.1, 0.9]}, "pretrain": {"epochs": 20}},
    "cifar-patch16-0.1-wide": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                               "poison": {"attack": "patch", "size": 16, "rate": 0.1, "target": 2,
                                          "region": [0.1, 0.9]}, "pretrain": {"epochs": 20}},
    # SSL-Backdoor's trigger size (50/224 of the side): the recipe table's 7 px rows learned nothing, so this
    # is the "threat model the attack never took" on colour photographs
    "cifar-patch7-1.0": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                         "poison": {"attack": "patch", "size": 7, "rate": 1.0, "target": 2}, "pretrain": {"epochs": 20}},
    # the 16 px patch on 0.96% with each poisoned image saved as JPEG at quality 75, as SSL-Backdoor's generator
    # leaves its poisons: the trigger's copies are no longer identical pixels
    "cifar-patch16-0.1-jpeg": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                               "poison": {"attack": "patch", "size": 16, "rate": 0.1, "target": 2, "jpeg": 75},
                               "pretrain": {"epochs": 20}},
    # the same at random places (10-90% of the side): each copy meets JPEG's 8 px block grid differently
    "cifar-patch16-0.1-wide-jpeg": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                                    "poison": {"attack": "patch", "size": 16, "rate": 0.1, "target": 2,
                                               "region": [0.1, 0.9], "jpeg": 75}, "pretrain": {"epochs": 20}},
    "cifar-clean": {"data": {"dataset": "npz", "num_samples": None, "size": None}, "pretrain": {"epochs": 20}},
    "cifar-patch12-1.0": {"data": {"dataset": "npz", "num_samples": None, "size": None},
                          "poison": {"attack": "patch", "size": 12, "rate": 1.0, "target": 2}, "pretrain": {"epochs": 20}},
}
QUICK = {"data": {"num_samples": 5000}, "pretrain": {"epochs": 5, "batch_size": 256},
         "detect": {"settings": {"classifier": {"models": 2, "iters": 500}}},
         "eval": {"label_fractions": [0.1], "val_images": 2000}}
FULL = {"data": {"num_samples": 60000}, "pretrain": {"epochs": 20},
        "eval": {"label_fractions": [0.01, 0.1], "val_images": 10000}}


def deep_merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def point_colour_settings_at(parser: argparse.ArgumentParser, settings: List[str], data) -> None:
    """The cifar-* settings read ``--data`` (a CIFAR-style .npz); a missing file is one clear error."""
    colour = [s for s in settings if s.startswith("cifar-")]
    if colour and (data is None or not Path(data).is_file()):
        parser.error(f"{', '.join(colour)} need --data PATH.npz (a CIFAR-style .npz file); got {data}")
    for s in colour:
        SETTINGS[s] = deep_merge(SETTINGS[s], {"data": {"root": str(Path(data).resolve())}})


def run_one(setting: str, seed: int, base: Dict[str, Any], root: Path, downstream: bool) -> Dict[str, Any]:
    from solo_poisoncam.pipeline.config import load_run_config
    from solo_poisoncam.pipeline.run import Chain

    cfg = load_run_config()
    cfg = deep_merge(cfg, base)
    cfg = deep_merge(cfg, SETTINGS[setting])
    cfg["seed"] = seed
    cfg["name"] = f"{setting}-s{seed}"
    cfg["retrain"] = {"enabled": downstream}
    cfg["reference"] = {"clean": downstream}
    chain = Chain(cfg, root / cfg["name"], progress=False, log=lambda s: print(f"  {cfg['name']} {s}", flush=True))
    if setting.endswith("clean"):
        return run_clean(chain)
    return chain.run()


def run_clean(chain) -> Dict[str, Any]:
    """Unpoisoned data: train on it, detect without ground truth, count what each defence removes."""
    from solo_poisoncam.data import dataset_from_spec
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.engine.cache import StageCache
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.pipeline.run import data_spec

    ckpt = chain.stage("clean threat model", chain.clean)
    data = dataset_from_spec(data_spec(chain.cfg))
    out = {}
    for method in chain.cfg["detect"]["methods"]:
        r = chain.stage(f"detect {method}", lambda m=method: run_detection(
            load_threat_model(ckpt), data, chain.detect_config(m), Runner(progress=False),
            StageCache(chain.out / "cache")))
        out[method] = {"num_removed": r.metrics["num_removed"], "num_samples": r.metrics["num_samples"]}
    return {"clean": out}


def _detection_row(d: Dict[str, Any]) -> Dict[str, Any]:
    """A detection's metrics plus its hit rate, the maps' own window accuracy (where match placed the
    trigger; else the same windows) and the seconds its stages cost when computed."""
    m = dict(d["metrics"])
    m["hit_rate"] = m.get("localisation_all", {}).get("hit_rate")
    m["maps_accuracy"] = m.get("localisation_all_maps", m.get("localisation_all", {})).get("trigger_detection_accuracy")
    m["seconds"] = stage_seconds(d.get("timings", {}))
    return m


def tables(results: Dict[str, Dict[int, Dict[str, Any]]], methods: List[str]) -> Dict[str, str]:
    from solo_poisoncam.eval.backdoor import TARGETED_MARGIN, describe_outcome
    from solo_poisoncam.eval.downstream import targeted_beyond_clean

    det_rows, bd_rows, ds_rows, clean_rows, cost_rows, seed_rows, ds_seed_rows = [], [], [], [], [], [], []
    beyond_rows: List[List[str]] = []
    keys = [("trigger_detection_accuracy", "trigger det. acc"), ("hit_rate", "hit rate"),
            ("maps_accuracy", "trigger det. acc (maps)"), ("precision", "precision"), ("recall", "recall"),
            ("f1", "F1"), ("auroc", "AUROC"), ("auprc", "AUPRC"), ("precision_at_20", "P@20"),
            ("num_removed", "removed"), ("seconds", "s (as computed)")]
    for setting, by_seed in results.items():
        runs = list(by_seed.values())
        if setting.endswith("clean"):
            for method in methods:
                removed = [r["clean"][method]["num_removed"] for r in runs]
                n = runs[0]["clean"][method]["num_samples"]
                clean_rows.append([method, f"{len(runs)}", mean_std(removed, 1), str(n),
                                   mean_std([x / n for x in removed], pct=True)])
            continue
        learned = sum(r["backdoor"]["learned"] for r in runs)
        t = lambda k: mean_std([r["backdoor"]["threat"][k] for r in runs], pct=True)  # noqa: E731
        rf = lambda k: mean_std([r["backdoor"]["reference"][k] for r in runs], pct=True)  # noqa: E731
        bd_rows.append([setting, f"{learned}/{len(runs)}", t("purity"), rf("purity"),
                        f"{t('patched_to_poison_cluster')} ({t('control_to_poison_cluster')})",
                        f"{rf('patched_to_poison_cluster')} ({rf('control_to_poison_cluster')})",
                        f"{t('probe_asr_patched')} ({t('probe_asr_control')})"])
        # each method's detections once, by seed (each seed is another threat model): (metrics row, timings)
        dets = {method: {seed: (_detection_row(r["detections"][method]), r["detections"][method].get("timings", {}))
                         for seed, r in by_seed.items() if method in r["detections"]} for method in methods}
        for seed, r in by_seed.items():
            b = r["backdoor"]
            strength = (f"{describe_outcome(b)}; probe ASR {b['threat']['probe_asr_patched']:.1%} vs control "
                        f"{b['threat']['probe_asr_control']:.1%}")
            for method in (m_ for m_ in methods if seed in dets[m_]):
                m = dets[method][seed][0]
                f = lambda k: "n/a" if m.get(k) is None else f"{m[k]:.3f}"  # noqa: E731
                seed_rows.append([setting, str(seed), strength if method == methods[0] else "", method,
                                  *[f(k) for k in ("trigger_detection_accuracy", "maps_accuracy", "hit_rate",
                                                   "precision", "recall", "auroc", "auprc")],
                                  str(m["num_removed"]), f"{m['seconds']:.0f}"])
        for method in methods:
            ms = [m for m, _ in dets[method].values()]
            row = [setting, method, f"{len(ms)}"]
            for k, _ in keys:
                vals = [m.get(k) for m in ms]
                row.append(mean_std(vals, 1 if k == "num_removed" else 0 if k == "seconds" else 3))
            det_rows.append(row)
            stages = [t for _, t in dets[method].values()]
            per = {}
            for t in stages:  # seconds per stage as computed (cache hits: what they cost at the time)
                for k, v in t.get("stage_compute_s", {}).items():
                    per.setdefault(k, []).append(v)
            cost_rows.append([setting, method, str(stages[0].get("images", "")) if stages else "",
                              ", ".join(f"{k} {mean_std(v, 0)}" for k, v in per.items()),
                              mean_std([m["seconds"] for m in ms], 0)])
        evaluated = [r for r in runs if r.get("evaluations")]  # the seeds run with --downstream
        if evaluated:
            names = list(dict.fromkeys(n for r in evaluated for n in r["evaluations"]))
            fracs = sorted({f for r in evaluated for ev in r["evaluations"].values() for f in ev["budgets"]}, key=float)
            for frac in fracs:  # every label budget (a backdoor may be targeted under one and not another)
                for name in names:
                    lin = [r["evaluations"][name]["budgets"][frac]["linear"] for r in evaluated
                           if frac in r["evaluations"].get(name, {}).get("budgets", {})]
                    if not lin:
                        continue
                    ds_rows.append([setting, name, str(len(lin)), f"{float(frac):.0%}",
                                    mean_std([m["clean_acc1"] for m in lin], pct=True),
                                    mean_std([m["patched_acc1"] for m in lin], pct=True),
                                    mean_std([m["asr"] for m in lin], pct=True), mean_std([m["fp"] for m in lin], 1),
                                    mean_std([m["asr_control"] for m in lin if "asr_control" in m], pct=True)])
            for seed, r in by_seed.items():  # the attacker's criterion against the clean-data SSL model
                ev = r.get("evaluations", {})
                b = targeted_beyond_clean(ev["undefended"], ev["clean-data"]) if {"undefended", "clean-data"} <= set(ev) else None
                if b is not None:
                    for frac, m in b["by_budget"].items():
                        beyond_rows.append([setting, str(seed), f"{float(frac):.0%}", "yes" if m["targeted"] else "no",
                                            f"{m['margin_threat']:.1%}", f"{m['margin_clean']:.1%}",
                                            f"{m['margin_threat'] - m['margin_clean']:.1%}"])
            for seed, r in by_seed.items():  # each seed's retrained models: a mean hides which seed missed
                for name, ev in r.get("evaluations", {}).items():
                    for frac in sorted(ev["budgets"], key=float):
                        m = ev["budgets"][frac]["linear"]
                        ds_seed_rows.append([setting, str(seed), name, f"{float(frac):.0%}"]
                                            + [mean_std([m.get(k)], pct=True) for k in ("clean_acc1", "patched_acc1", "asr")]
                                            + [str(m["fp"]), mean_std([m.get("asr_control")], pct=True)])
    out = {
        "Backdoor strength of the threat models (precondition of every detection number)": markdown_table(
            ["setting", "learned", "purity", "purity (random-init)", "patched -> poison cluster (control)",
             "same, random-init", "probe ASR patched (control)"], bd_rows),
        "Detection quality (mean ± std over seeds)": markdown_table(
            ["setting", "method", "seeds"] + [label for _, label in keys], det_rows),
    }
    if seed_rows:
        out["Per seed (backdoor: the check's verdict and the criteria that hold)"] = markdown_table(
            ["setting", "seed", "backdoor", "method", "trigger det. acc", "(maps)", "hit rate", "precision",
             "recall", "AUROC", "AUPRC", "removed", "s"], seed_rows)
    if cost_rows:
        out["Time per stage, seconds as computed (mean ± std over seeds; the features stage is shared)"] = \
            markdown_table(["setting", "method", "images", "stages", "total"], cost_rows)
    if clean_rows:
        out["Clean data: what each defence removes when there is nothing to find"] = markdown_table(
            ["method", "seeds", "removed", "of", "share"], clean_rows)
    if ds_rows:
        out["Downstream (linear probe; mean ± std over seeds)"] = markdown_table(
            ["setting", "model", "seeds", "labels", "clean acc", "patched acc", "ASR", "FP", "control ASR"], ds_rows)
    if len({(r[0], r[1]) for r in ds_seed_rows}) > 1:
        out["Downstream per seed (control ASR: a same-size random-colour patch instead of the trigger)"] = \
            markdown_table(["setting", "seed", "model", "labels", "clean acc", "patched acc", "ASR", "FP", "control ASR"],
                           ds_seed_rows)
    if beyond_rows:
        out[f"Targeted beyond the clean-data model (probe-ASR margin over the control patch; targeted: the "
            f"undefended model's exceeds the clean-data model's by >= {TARGETED_MARGIN:.0%} at 10% of the labels "
            f"or with every label; one SSL run each)"] = \
            markdown_table(["setting", "seed", "labels", "targeted", "margin undefended", "margin clean data", "difference"],
                           beyond_rows)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: 5,000 Fashion-MNIST images, 5 epochs")
    p.add_argument("--demo-scale", action="store_true",
                   help="the embedded demo config as is (10,000 images, 5 epochs): the README's main numbers")
    p.add_argument("--settings", nargs="+", default=["patch-0.5", "patch-1.0", "blend", "frequency", "clean"],
                   choices=sorted(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--downstream", action="store_true", help="also retrain on kept sets and evaluate (slower)")
    p.add_argument("--root", default="runs/bench", help="run folders (reused: the benchmark resumes)")
    p.add_argument("--name", default=None, help="results file name (default detection-<scale>: quick, demo or full)")
    p.add_argument("--data", default=None, help="the .npz file of the cifar-* settings (CIFAR-style arrays)")
    p.add_argument("--labels", nargs="+", type=float, default=None, metavar="FRACTION",
                   help="label budgets of the downstream evaluation (e.g. 0.1 1.0; default: the scale's); "
                        "evaluations are keyed by them, so finished runs are only evaluated again")
    p.add_argument("--from-runs", action="store_true",
                   help="tabulate the finished run folders (their results.json) without running anything")
    args = p.parse_args()
    point_colour_settings_at(p, args.settings, args.data)
    scale = "demo" if args.demo_scale else ("quick" if args.quick else "full")
    base = {"demo": {}, "quick": QUICK, "full": FULL}[scale]
    if args.labels:
        if not all(0 < f <= 1 for f in args.labels):
            p.error(f"--labels: fractions in (0, 1], got {args.labels}")
        base = deep_merge(base, {"eval": {"label_fractions": sorted(args.labels)}})
    env = environment()
    root = Path(args.root) / scale
    results: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for setting in args.settings:
        for seed in args.seeds:
            print(f"== {setting} seed {seed}", flush=True)
            if args.from_runs:
                done = root / f"{setting}-s{seed}" / "results.json"
                if not done.is_file():
                    p.error(f"--from-runs: '{done}' does not exist (run the benchmark without --from-runs first)")
                results.setdefault(setting, {})[seed] = json.loads(done.read_text())
                continue
            results.setdefault(setting, {})[seed] = run_one(setting, seed, base, root, args.downstream)
    methods = ["poisoncam", "patchsearch"]
    tabs = tables(results, methods)
    name = args.name or f"detection-{scale}"
    settings = {"base": base, "settings": {s: SETTINGS[s] for s in args.settings}, "seeds": args.seeds,
                "downstream": args.downstream}
    raw = {s: {str(k): {kk: v.get(kk) for kk in ("backdoor", "detections", "evaluations", "timings", "clean")}
                        for k, v in by.items()} for s, by in results.items()}
    path = write_results(name, env, settings, tabs, raw)
    return print_tables(tabs, path)


if __name__ == "__main__":
    sys.exit(main())
