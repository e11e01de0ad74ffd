"""Trust: PoisonCAM's label-free verdict and its removal modes, side by side on the same threat models.

    python benchmarks/bench_trust.py --quick --settings clean patch-0.5-7px patch-1.0 patch-0.5 patch-0.1 patch-0.05
    python benchmarks/bench_trust.py --quick --settings cifar-patch16-1.0 --data PATH/cifar10_subset.npz
    python benchmarks/bench_trust.py --quick --modes match --no-patchsearch \
        --variant default --variant "occluders 0.25+0.5:occluder=[0.25, 0.5]"

For each (setting, seed) of ``bench_detection.py`` (the same run folders, so threat models are
shared): the threat model and its backdoor check, then PoisonCAM once per removal mode (probe,
score, classifier; one stage cache, so masking runs once) and PatchSearch as its paper runs it.
"clean" and "cifar-clean" train on unpoisoned data: every removal there is a false one. The verdict uses no
ground truth; the metrics do. ``--variant "NAME[:key=value;key=value]"`` runs PoisonCAM under
detection settings side by side (values parsed as ``poisoncam detect --set`` parses them; the same threat
model, and one stage cache, so shared stages run once); "default" is the settings as they are. Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detection import QUICK, SETTINGS, deep_merge, point_colour_settings_at  # noqa: E402
from common import environment, markdown_table, parse_variant, print_tables, stage_seconds, write_results  # noqa: E402

MODES = ("probe", "match", "classifier")


def run_one(setting: str, seed: int, base: Dict[str, Any], root: Path, modes, patchsearch: bool,
            variants: List[Dict[str, Any]]) -> Dict[str, Any]:
    from solo_poisoncam.commands.detect import parse_sets
    from solo_poisoncam.data import dataset_from_spec
    from solo_poisoncam.detect.config import DetectConfig
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.engine.cache import StageCache
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.detection import score_detection
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.pipeline.config import load_run_config
    from solo_poisoncam.pipeline.run import Chain, data_spec
    from solo_poisoncam.poison import PoisonedDataset

    cfg = deep_merge(deep_merge(load_run_config(), base), SETTINGS[setting])
    cfg.update(seed=seed, name=f"{setting}-s{seed}", retrain={"enabled": False}, reference={"clean": False})
    chain = Chain(cfg, root / cfg["name"], progress=False, log=lambda s: print(f"  {cfg['name']} {s}", flush=True))
    out: Dict[str, Any] = {"setting": setting, "seed": seed, "detections": {}}
    if setting.endswith("clean"):
        ckpt, manifest = chain.stage("clean threat model", chain.clean), None
        data = dataset_from_spec(data_spec(cfg))
    else:
        manifest = chain.stage("poison", chain.poison)
        ckpt = chain.stage("threat model", chain.threat)
        out["backdoor"] = chain.stage("backdoor check", lambda: chain.backdoor(ckpt))
        data = PoisonedDataset.from_manifest(manifest)
    runs = [("poisoncam", m, v) for v in variants for m in modes]
    runs += [("patchsearch", "classifier", {"name": "default", "sets": []})] if patchsearch else []
    for method, mode, variant in runs:
        dcfg = DetectConfig.from_dict({**cfg["detect"].get("settings", {}), **parse_sets(variant["sets"]),
                                       "method": method, "remove": mode, "seed": seed})
        name = f"{method}:{mode}" + ("" if variant["name"] == "default" else f" [{variant['name']}]")
        r = chain.stage(f"detect {name}", lambda d=dcfg: run_detection(
            load_threat_model(ckpt), data, d, Runner(progress=False), StageCache(chain.out / "cache")))
        if manifest is not None:
            r = score_detection(r, manifest)
        m = dict(r.metrics)
        if manifest is None:  # unpoisoned data: every removal is a false one
            m["false_removal_rate"] = m["num_removed"] / m["num_samples"]
        out["detections"][name] = {"metrics": m, "timings": r.timings}
    return out


def _f(v, digits=3):
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def summary(rows: List[Dict[str, Any]]) -> str:
    """One row per (setting, detector:removal): per-seed backdoor, verdict and removed; mean ± std of the rest."""
    from common import mean_std

    groups: Dict[Any, List[Any]] = {}
    for r in rows:
        b = r.get("backdoor")
        check = "clean" if b is None else ("T" if b.get("targeted") else ("L" if b["learned"] else "N"))
        for name, d in r["detections"].items():
            groups.setdefault((r["setting"], name), []).append((r["seed"], check, d["metrics"], d["timings"]))
    out = []
    for (setting, name), lst in groups.items():
        lst.sort(key=lambda x: x[0])
        ms = [m for _, _, m, _ in lst]
        verdicts = " ".join("found" if (m.get("verdict") or {}).get("found") else ("none" if m.get("verdict")
                            else "n/a") for m in ms)
        out.append([setting, " ".join(str(s) for s, *_ in lst), " ".join(c for _, c, _, _ in lst), name, verdicts,
                    " ".join(str(m["num_removed"]) for m in ms), mean_std([m.get("precision") for m in ms]),
                    mean_std([m.get("recall") for m in ms]), mean_std([m.get("false_removal_rate") for m in ms]),
                    mean_std([stage_seconds(t) for *_, t in lst], 0)])
    return markdown_table(["setting", "seeds", "backdoor check (per seed)", "detector:removal", "verdict (per seed)",
                           "removed (per seed)", "precision", "recall", "false removal rate", "stages s"], out)


def tables(rows: List[Dict[str, Any]]) -> Dict[str, str]:
    from solo_poisoncam.eval.backdoor import describe_outcome

    bd, det = [], []
    for r in rows:
        if "backdoor" in r:
            b = r["backdoor"]
            t, ref = b["threat"], b["reference"]
            bd.append([r["setting"], str(r["seed"]), describe_outcome(b), f"{t['purity']:.1%} ({ref['purity']:.1%})",
                       f"{t['patched_to_poison_cluster']:.1%} / {t['control_to_poison_cluster']:.1%}",
                       f"{t['knn_asr_patched']:.1%} / {t['knn_asr_control']:.1%} "
                       f"({ref['knn_asr_patched']:.1%} / {ref['knn_asr_control']:.1%})",
                       f"{t['probe_asr_patched']:.1%} / {t['probe_asr_control']:.1%} ({ref['probe_asr_patched']:.1%})"])
        for name, d in r["detections"].items():
            m, t = d["metrics"], d["timings"]
            v = m.get("verdict") or {}
            core = "".join(f", {v[k]} by {w}" for k, w in (("repeated_by_core", "core"), ("repeated_by_part", "part"),
                                                     ("repeated_by_shift", "copies at other places"))
                           if v.get(k))
            flip = (f"; flip {v['flip']:.2f} vs {v['flip_threshold']:.2f}" if v.get("flip") is not None else "")
            verdict = (("found" if v.get("found") else "none") + f" ({v.get('repeated')} repeat{core}; coherence "
                       f"{v.get('coherence', 0):.2f} vs {v.get('coherence_threshold', 0):.2f}{flip})"
                       ) if v else "n/a (no verdict)"
            det.append([r["setting"], str(r["seed"]), name, verdict, str(m["num_removed"]),
                        _f(m.get("precision")), _f(m.get("recall")), _f(m.get("f1")),
                        _f((m.get("localisation_all") or {}).get("trigger_detection_accuracy")), _f(m.get("auroc")),
                        _f(m.get("false_removal_rate")), f"{stage_seconds(t):.0f}",
                        ", ".join(f"{k} {v:.0f}" for k, v in t.get("stage_compute_s", {}).items() if v)])
    return {
        "Summary over seeds (backdoor check: T targeted, L learned, N not learned by its rule)": summary(rows),
        "Backdoor strength of the threat models (precondition of every detection number)": markdown_table(
            ["setting", "seed", "backdoor (criteria that hold)", "purity (random-init)",
             "patched / control -> poison cluster", "kNN-ASR patched / control (random-init)",
             "probe ASR patched / control (random-init patched)"], bd),
        "Verdict and removal (PoisonCAM per removal mode; PatchSearch with its classifier)": markdown_table(
            ["setting", "seed", "method:removal",
             "verdict (repeating candidates; their coherence and in-place flip rate vs null)", "removed", "precision",
             "recall", "F1", "trigger det. acc", "AUROC", "false removal rate", "stages s",
             "per stage s (as computed)"], det),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: 5,000 Fashion-MNIST images, 5 epochs")
    p.add_argument("--settings", nargs="+", default=["clean", "patch-0.5-7px", "patch-1.0", "patch-0.5", "patch-0.1",
                                                     "patch-0.05"], choices=sorted(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--no-patchsearch", action="store_true")
    p.add_argument("--variant", action="append", default=None, metavar="NAME[:key=value;...]",
                   help="PoisonCAM detection settings to run side by side (default: default)")
    p.add_argument("--root", default="runs/bench", help="run folders (shared with bench_detection.py)")
    p.add_argument("--name", default="trust")
    p.add_argument("--data", default=None, help="the .npz file of the cifar-* settings")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="tabulate the rows of earlier results files (benchmarks/results/trust-*.json) into --name")
    args = p.parse_args()
    if args.merge:
        rows = [row for f in args.merge for row in json.loads(Path(f).read_text())["results"]]
        env = environment()
        path = write_results(args.name, env, {"merged": args.merge}, tables(rows), rows)
        return print_tables(tables(rows), path)
    point_colour_settings_at(p, args.settings, args.data)
    base = QUICK if args.quick else {}
    root = Path(args.root) / ("quick" if args.quick else "full")
    env = environment()
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    rows = []
    for seed in args.seeds:  # every setting of one seed first: a cut-short run still covers every regime
        for setting in args.settings:
            print(f"== {setting} seed {seed}", flush=True)
            rows.append(run_one(setting, seed, base, root, args.modes, not args.no_patchsearch, variants))
            tabs = tables(rows)  # written after every run: a long benchmark shows its progress
            settings = {"base": base, "settings": {s: SETTINGS[s] for s in args.settings}, "seeds": args.seeds,
                        "modes": args.modes, "variants": variants}
            path = write_results(args.name, env, settings, tabs, rows)
    return print_tables(tabs, path)


if __name__ == "__main__":
    sys.exit(main())
