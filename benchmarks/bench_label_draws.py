"""Which part of a downstream evaluation moves the linear-probe ASR: the labelled images the probe gets
(the label draw), or the places of the patches; and what the ASR is with every label.

    python benchmarks/bench_label_draws.py --run runs/bench/quick/cifar-patch16-1.0-wide-s2 \\
        --spread-root runs/retrain-spread --label-seeds 1 2 3 4 5 --patch-seeds 1 2 3 4 5

The run folder is one of ``bench_detection.py --downstream``; its models (results.json) are evaluated
with the run's evaluation settings, and with ``--spread-root`` also the models that
``bench_retrain_spread.py`` retrained from it (``<root>/<run>/<model>-s<seed>``). Each model's
features are extracted once; the probe is trained for every label seed (which images of the label
budget, its batch order) and tested on the patches placed by every patch seed. ``--fractions`` adds
larger budgets (1.0: every label, no draw). Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean, pstdev
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, kept_minus_clean, markdown_table, print_tables, write_results  # noqa: E402


def models_of(run: Path, spread_root: Path | None) -> List[Dict[str, Any]]:
    from solo_poisoncam.io import read_json

    res = read_json(run / "results.json")
    out = [{"model": m, "seed": res["config"]["seed"], "checkpoint": c} for m, c in res["models"].items()]
    if spread_root is not None:
        for folder in sorted((spread_root / run.name).glob("*-s*")):
            model, _, seed = folder.name.rpartition("-s")
            ckpts = sorted(c for c in folder.glob("*.ckpt") if c.name != "last.ckpt")
            if seed.isdigit() and ckpts:
                out.append({"model": model, "seed": int(seed), "checkpoint": str(ckpts[-1])})
    return out


def grid(run: Path, row: Dict[str, Any], label_seeds: List[int], patch_seeds: List[int],
         fractions: List[float]) -> Dict[str, Any]:
    """ASR and control ASR of the linear probe for every label seed x patch seed, per budget."""
    from solo_poisoncam.data import dataset_from_spec
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.downstream import clean_features, evaluate_features, patched_features
    from solo_poisoncam.io import read_json
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.pipeline.run import data_spec
    from solo_poisoncam.poison import PoisonManifest, build_attack

    cfg = read_json(run / "results.json")["config"]
    m = PoisonManifest.load(run / "poison")
    attack, runner = build_attack(m.attack), Runner(progress=False)
    train = dataset_from_spec(data_spec(cfg))
    val = dataset_from_spec({**data_spec(cfg), "split": "test", "num_samples": cfg["eval"].get("val_images")})
    model = load_threat_model(row["checkpoint"])
    feats = clean_features(model, train, val, runner)
    patched = {p: patched_features(model, val, attack, m.target, p, runner) for p in patch_seeds}
    out: Dict[str, Any] = {}
    for f in fractions:
        cells = {}
        for ls in label_seeds:
            for p in patch_seeds:
                lin = evaluate_features(feats, patched[p], m.target, (f,), ls)["budgets"][f"{f:g}"]["linear"]
                cells[f"{ls},{p}"] = {k: lin[k] for k in ("asr", "asr_control", "clean_acc1")}
        out[f"{f:g}"] = cells
    return out


def summarise(cells: Dict[str, Dict[str, float]], label_seeds: List[int], patch_seeds: List[int]) -> Dict[str, Any]:
    """Mean ASR per label seed (over patch seeds), the spread each factor causes: the std over label
    seeds of the per-label-seed means, and the mean over label seeds of the std over patch seeds."""
    per_label = [mean(cells[f"{ls},{p}"]["asr"] for p in patch_seeds) for ls in label_seeds]
    within = [pstdev([cells[f"{ls},{p}"]["asr"] for p in patch_seeds]) for ls in label_seeds]
    return {"per_label": per_label, "std_label": pstdev(per_label), "std_patch": mean(within),
            "asr": mean(c["asr"] for c in cells.values()), "control": mean(c["asr_control"] for c in cells.values()),
            "clean": mean(c["clean_acc1"] for c in cells.values())}


def tables(rows: List[Dict[str, Any]], label_seeds: List[int], patch_seeds: List[int],
           fractions: List[float]) -> Dict[str, str]:
    out = {}
    for f in fractions:
        body = []
        for r in rows:
            s = summarise(r["grid"][f"{f:g}"], label_seeds, patch_seeds)
            r.setdefault("summary", {})[f"{f:g}"] = s
            body.append([r["model"], str(r["seed"]), " / ".join(f"{a:.1%}" for a in s["per_label"]),
                         f"{s['std_label']:.1%}", f"{s['std_patch']:.1%}", f"{s['asr']:.1%}", f"{s['control']:.1%}",
                         f"{s['clean']:.1%}"])
        out[f"{f:.0%} of the labels: linear-probe ASR per label seed {', '.join(map(str, label_seeds))} (mean over "
            f"patch seeds {', '.join(map(str, patch_seeds))}), and the spread each causes"] = markdown_table(
            ["model", "SSL seed", "ASR per label seed", "std over label seeds", "std over patch seeds",
             "ASR (all)", "control ASR", "clean acc"], body)
        diff = kept_minus_clean(rows, lambda r: {k: c["asr"] for k, c in r["grid"][f"{f:g}"].items()})
        if diff:
            out[f"{f:.0%} of the labels: kept-set model minus the clean-data model of the same SSL seed, same label "
                f"and patch seeds (ASR points)"] = diff
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder of bench_detection.py --downstream")
    p.add_argument("--spread-root", default=None, help="bench_retrain_spread.py's --root: its models of this run too")
    p.add_argument("--label-seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--patch-seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    p.add_argument("--fractions", nargs="+", type=float, default=None,
                   help="label budgets (default: the run's evaluation budgets, and 1.0)")
    p.add_argument("--name", default=None, help="results file name (default label-draws-<run>)")
    args = p.parse_args()
    from solo_poisoncam.io import read_json

    run = Path(args.run)
    done = run / "results.json"
    if not done.is_file() or not read_json(done).get("models"):
        p.error(f"{run} is not a finished bench_detection.py --downstream run folder (no models in {done})")
    fractions = args.fractions or sorted(set(read_json(done)["config"]["eval"]["label_fractions"]) | {1.0})
    rows = models_of(run, Path(args.spread_root) if args.spread_root else None)
    for r in rows:
        print(f"== {r['model']} (SSL seed {r['seed']})", flush=True)
        r["grid"] = grid(run, r, args.label_seeds, args.patch_seeds, fractions)
    t = tables(rows, args.label_seeds, args.patch_seeds, fractions)
    name = args.name or f"label-draws-{run.name}"
    path = write_results(name, environment(), {"run": str(run), "label_seeds": args.label_seeds,
                                               "patch_seeds": args.patch_seeds, "fractions": fractions}, t, rows)
    return print_tables(t, path)


if __name__ == "__main__":
    sys.exit(main())
