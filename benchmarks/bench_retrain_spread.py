"""How much of a retrained model's downstream ASR is the SSL run's seed: the run's kept sets and its
clean-data reference retrained under other seeds, evaluated exactly as the run evaluated them.

    python benchmarks/bench_retrain_spread.py --run runs/bench/quick/cifar-patch16-1.0-wide-s1 --seeds 11 12

The run folder is one of ``bench_detection.py --downstream`` (its run.json, poisons, detections'
kept.txt and evaluations). Each model of ``--models`` (a detector's kept set; ``clean-data``: every
image, the poisons as their clean originals; ``undefended``: the poisoned set, the threat model) is
trained again with the run's pretraining settings
and only the seed changed, in ``--root``/<run>/<model>-s<seed> (reused when finished), then evaluated
with the run's own evaluation settings and seed (same labelled images, same patch and control
places), so the rows differ only by the SSL run. The run's own row (its seed) comes from its
results.json. ``--eval-seeds``: every model (the run's own and the retrained) is also evaluated under
these evaluation seeds (the labelled images the probe gets, its initialisation, the patch places;
cached in ``--root``/<run>/evals), and each detector's kept-set model is compared with the clean-data
model of the same SSL seed under the same evaluation seed. Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (environment, kept_minus_clean, largest_budget, markdown_table, mean_std,  # noqa: E402
                    print_tables, write_results)

MODELS = ("undefended", "poisoncam", "clean-data")


def _linear(ev: Dict[str, Any]) -> Dict[str, Any]:
    frac, linear = largest_budget(ev)
    return {"labels": float(frac), **linear}


def retrain_and_evaluate(folder: Path, model: str, seed: int, root: Path) -> Dict[str, Any]:
    from solo_poisoncam.io import hash_file, read_indexes, read_json, write_json
    from solo_poisoncam.pipeline.run import evaluate_checkpoint, model_pretrain_cfg
    from solo_poisoncam.ssl import pretrain

    cfg = read_json(folder / "run.json")["config"]
    out = root / folder.name / f"{model}-s{seed}"
    keep = None if model in ("undefended", "clean-data") else read_indexes(folder / f"detect-{model}" / "kept.txt")
    t0 = time.perf_counter()
    ckpt = pretrain(model_pretrain_cfg(dict(cfg, seed=seed), folder, model, out, keep=keep, progress=False))
    train_s = time.perf_counter() - t0
    # a finished model is reused in seconds: its training time is the one recorded beside it when it was trained
    timing, key = out / "train.json", hash_file(ckpt)
    if timing.is_file() and read_json(timing).get("checkpoint") == key:
        train_s = read_json(timing)["train_s"]
    else:
        write_json(timing, {"checkpoint": key, "train_s": train_s})
    res = evaluate_checkpoint(cfg, folder, ckpt)  # the run's own evaluation seed: only the SSL run differs
    write_json(out / "eval.json", res)
    return {"model": model, "seed": seed, "checkpoint": str(ckpt), "train_s": train_s, **_linear(res)}


def tables(run: str, rows: List[Dict[str, Any]]) -> Dict[str, str]:
    from solo_poisoncam.eval.backdoor import TARGETED_MARGIN
    from solo_poisoncam.eval.downstream import targeted_beyond_clean

    per = [[r["model"], str(r["seed"]) + (" (the run's)" if r.get("own") else ""), f"{r['clean_acc1']:.1%}",
            f"{r['patched_acc1']:.1%}", f"{r['asr']:.1%}", str(r["fp"]),
            "n/a" if r.get("asr_control") is None else f"{r['asr_control']:.1%}"] for r in rows]
    summary = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        summary.append([model, str(len(rs)), mean_std([r["clean_acc1"] for r in rs], pct=True),
                        mean_std([r["asr"] for r in rs], pct=True),
                        f"{min(r['asr'] for r in rs):.1%} - {max(r['asr'] for r in rs):.1%}",
                        mean_std([r.get("asr_control") for r in rs], pct=True)])
    out = {
        f"Each SSL seed of {run} (linear probe; the run's evaluation seed and label budget)": markdown_table(
            ["model", "SSL seed", "clean acc", "patched acc", "ASR", "FP", "control ASR"], per),
        "Over the seeds (mean ± std)": markdown_table(
            ["model", "seeds", "clean acc", "ASR", "ASR range", "control ASR"], summary),
    }
    beyond = []
    for u in (r for r in rows if r["model"] == "undefended"):
        for c in (r for r in rows if r["model"] == "clean-data"):
            b = targeted_beyond_clean(_as_eval(u), _as_eval(c))
            if b is not None:
                beyond.append([str(u["seed"]), str(c["seed"]), "yes" if b["targeted"] else "no",
                               f"{b['margin_threat']:.1%}", f"{b['margin_clean']:.1%}"])
    if beyond:
        out[f"The backdoor check's targeted rule against clean-data SSL models (probe-ASR margin over the control "
            f"patch; targeted: the undefended model's exceeds the clean-data model's by >= {TARGETED_MARGIN:.0%}), "
            f"every pair of SSL seeds"] = markdown_table(
                ["undefended seed", "clean-data seed", "targeted", "margin undefended", "margin clean data"], beyond)
    return out


def _as_eval(row: Dict[str, Any]) -> Dict[str, Any]:
    """A table row back in the shape of an evaluation (its one label budget)."""
    return {"budgets": {f"{row['labels']:g}": {"linear": row}}}


def evaluate_with_seed(folder: Path, row: Dict[str, Any], seed: int, root: Path) -> Dict[str, Any]:
    """``row``'s model under the run's evaluation settings with evaluation seed ``seed`` (which labelled
    images the probe gets, its initialisation, the patch places); cached beside the retrained models,
    keyed by the checkpoint's bytes."""
    from solo_poisoncam.io import hash_file, read_json, write_json
    from solo_poisoncam.pipeline.run import evaluate_checkpoint

    cfg = read_json(folder / "run.json")["config"]
    path = root / folder.name / "evals" / f"{row['model']}-s{row['seed']}-e{seed}.json"
    key = {"ckpt": hash_file(row["checkpoint"]), "eval": cfg["eval"], "seed": seed}
    if path.is_file() and read_json(path).get("key") == key:
        return read_json(path)["linear"]
    linear = _linear(evaluate_checkpoint(dict(cfg, seed=seed), folder, row["checkpoint"]))
    write_json(path, {"key": key, "linear": linear})
    return linear


def eval_seed_tables(rows: List[Dict[str, Any]], seeds: List[int]) -> Dict[str, str]:
    """Each model and SSL seed over the evaluation seeds, and each detector's kept-set model against the
    clean-data model of the same SSL seed under the same evaluation seed."""
    per = []
    for r in rows:
        ev = [r["by_eval_seed"][str(e)] for e in seeds]
        per.append([r["model"], str(r["seed"]), " / ".join(f"{m['asr']:.1%}" for m in ev),
                    mean_std([m["asr"] for m in ev], pct=True), mean_std([m.get("asr_control") for m in ev], pct=True),
                    mean_std([m["clean_acc1"] for m in ev], pct=True)])
    diff = kept_minus_clean(rows, lambda r: {e: r["by_eval_seed"][str(e)]["asr"] for e in seeds})
    seeds_txt = ", ".join(map(str, seeds))
    out = {f"Each model under evaluation seeds {seeds_txt} (ASR per seed, then mean ± std)": markdown_table(
        ["model", "SSL seed", "ASR per evaluation seed", "ASR", "control ASR", "clean acc"], per)}
    if diff:
        out["Kept-set model minus the clean-data model of the same SSL seed, same evaluation seed (ASR points)"] = \
            diff
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder of bench_detection.py --downstream")
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="SSL seeds to retrain with")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="detectors' kept sets and/or clean-data")
    p.add_argument("--root", default="runs/retrain-spread", help="retrained models (reused when finished)")
    p.add_argument("--name", default=None, help="results file name (default retrain-spread-<run>)")
    p.add_argument("--eval-seeds", nargs="+", type=int, default=None,
                   help="also evaluate every model under these evaluation seeds (label draw, probe, patch places)")
    args = p.parse_args()
    from solo_poisoncam.io import read_json

    folder = Path(args.run)
    done = folder / "results.json"
    if not done.is_file() or not read_json(done).get("evaluations"):
        p.error(f"{folder} is not a finished bench_detection.py --downstream run folder (no evaluations in {done})")
    results = read_json(done)
    own_seed = results["config"]["seed"]
    for model in args.models:
        if model not in results["evaluations"]:
            p.error(f"{folder} has no evaluation of '{model}' (has {', '.join(results['evaluations'])})")
        if own_seed in args.seeds:
            p.error(f"seed {own_seed} is the run's own; give other seeds")
    rows = []
    for model in args.models:
        rows.append({"model": model, "seed": own_seed, "own": True, "checkpoint": results["models"][model],
                     **_linear(results["evaluations"][model])})
        for seed in args.seeds:
            print(f"== {model} seed {seed}", flush=True)
            rows.append(retrain_and_evaluate(folder, model, seed, Path(args.root)))
    t = tables(folder.name, rows)
    if args.eval_seeds:
        for r in rows:
            print(f"== evaluate {r['model']} (SSL seed {r['seed']}) under evaluation seeds {args.eval_seeds}", flush=True)
            r["by_eval_seed"] = {str(e): evaluate_with_seed(folder, r, e, Path(args.root)) for e in args.eval_seeds}
        t.update(eval_seed_tables(rows, args.eval_seeds))
    name = args.name or f"retrain-spread-{folder.name}"
    path = write_results(name, environment(), {"run": str(folder), "seeds": args.seeds, "models": args.models,
                                               "eval_seeds": args.eval_seeds}, t, rows)
    return print_tables(t, path)


if __name__ == "__main__":
    sys.exit(main())
