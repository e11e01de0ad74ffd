"""PoisonCAM under other detector settings, side by side on the same trained threat models, beside
PatchSearch's time on each of them: by default its masking in one pass vs coarse to fine.

    python benchmarks/bench_passes.py --runs runs/bench/quick/patch-0.5-s0 runs/bench/quick/patch-0.5-20k-s0
    python benchmarks/bench_passes.py --runs RUN ... --variant "default" --variant "occluder 0.5:occluder=0.5"

Each run folder is one of ``bench_detection.py`` (a trained threat model, its poisons, its stage
cache, its PatchSearch detection). On each: PoisonCAM at its defaults (coarse to fine: every image
under the coarse occluders, the top ``coarse_top`` again under the full set) and with
``coarse_stride: null`` (one pass: every image under the full set, the default before), with the
run's own detection settings otherwise. Quality against the run's manifest, and seconds per stage as
computed (a stage read from the cache counts what it cost when it was computed, so run this alone on
the machine). PatchSearch's seconds come from the run's ``detect-patchsearch/metrics.json``.
``--variant "NAME:key=value,key=value"`` (DetectConfig fields; ``NAME`` alone: the run's settings)
replaces the two passes with the variants given; the quality table then also shows each verdict's
statistics against their thresholds. Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, print_tables, stage_seconds, write_results  # noqa: E402

VARIANTS = {"one pass": {"coarse_stride": None}, "coarse to fine": {}}
MASKING = ("cam-coarse", "cam")  # the masking stages; refine, flip, verdict, match follow


def masked_forwards(cfg, n: int, side: int) -> int:
    """Masked forward passes of the masking stages (counted, not timed: also right for cache hits)."""
    from solo_poisoncam.detect.poisoncam import build_masks, fine_count

    pc = cfg.poisoncam
    fine = fine_count(pc, n)
    full = build_masks(pc, side, cfg.seed).shape[0]
    if fine == n:
        return n * full
    return n * build_masks(pc, side, cfg.seed, stride=pc.coarse_stride).shape[0] + fine * full


def parse_variant(text: str) -> tuple:
    """``NAME:key=value,key=value`` -> (NAME, {key: value}); values as YAML (null, 0.5, true, [0.25, 0.5]:
    commas inside brackets belong to the value)."""
    import re

    import yaml

    name, _, rest = text.partition(":")
    pairs = [kv.split("=", 1) for kv in re.split(r",(?![^\[]*\])", rest) if kv.strip()]
    if not name.strip() or any(len(kv) != 2 for kv in pairs):
        raise ValueError(f"--variant must be NAME or NAME:key=value,key=value; got {text!r}")
    return name.strip(), {k.strip(): yaml.safe_load(v) for k, v in pairs}


def run_one(folder: Path, variants: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    from solo_poisoncam.detect.config import DetectConfig
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.engine.cache import StageCache
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.backdoor import describe_outcome
    from solo_poisoncam.eval.detection import score_detection
    from solo_poisoncam.io import read_json
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.poison import PoisonedDataset, PoisonManifest
    from solo_poisoncam.report.tables import verdict_cell

    cfg = read_json(folder / "run.json")["config"]
    results = read_json(folder / "results.json")
    manifest = PoisonManifest.load(folder / "poison")
    data = PoisonedDataset.from_manifest(manifest)
    model = load_threat_model(results["models"]["undefended"])
    base = {**cfg["detect"].get("settings", {}), "method": "poisoncam", "seed": cfg["seed"]}
    out: Dict[str, Any] = {"run": folder.name, "backdoor": describe_outcome(results["backdoor"]), "variants": {}}
    for name, extra in variants.items():
        dcfg = DetectConfig.from_dict({**base, **extra})
        r = score_detection(run_detection(model, data, dcfg, Runner(progress=False), StageCache(folder / "cache")),
                            manifest)
        m = r.metrics
        t = r.timings["stage_compute_s"]
        out["images"] = m["num_samples"]
        out["variants"][name] = {
            "trigger_detection_accuracy": m.get("trigger_detection_accuracy"),
            "maps_accuracy": m.get("localisation_all_maps", m.get("localisation_all", {})).get("trigger_detection_accuracy"),
            "precision": m.get("precision"), "recall": m.get("recall"), "auroc": m.get("auroc"),
            "num_removed": m["num_removed"], "verdict": m.get("verdict", {}).get("found"),
            "verdict_cell": verdict_cell(m.get("verdict")),
            "masked_forwards": masked_forwards(dcfg, m["num_samples"], r.side),
            "masking_s": round(sum(t.get(k, 0.0) for k in MASKING), 1), "stages_s": t,
            "total_s": round(stage_seconds(r.timings), 1)}
    ps = read_json(folder / "detect-patchsearch" / "metrics.json")
    out["patchsearch"] = {"stages_s": ps["timings"]["stage_compute_s"], "total_s": round(stage_seconds(ps["timings"]), 1)}
    return out


def tables(rows: List[Dict[str, Any]]) -> Dict[str, str]:
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    quality, stages, growth = [], [], []
    for r in rows:
        ps = r["patchsearch"]["total_s"]
        for i, (name, v) in enumerate(r["variants"].items()):
            quality.append([r["run"], str(r["images"]), r["backdoor"] if i == 0 else "", name,
                            f(v["trigger_detection_accuracy"]), f(v["maps_accuracy"]), f(v["precision"]),
                            f(v["recall"]), f(v["auroc"]), str(v["num_removed"]), v.get("verdict_cell", "n/a"),
                            f"{v['masked_forwards']:,}", f"{v['masking_s']:.0f}", f"{v['total_s']:.0f}", f"{ps:.0f}",
                            f"{ps / v['total_s']:.2f}x"])
            stages.append([r["run"], name, ", ".join(f"{k} {s:.0f}" for k, s in v["stages_s"].items())])
        stages.append([r["run"], "patchsearch", ", ".join(f"{k} {s:.0f}" for k, s in r["patchsearch"]["stages_s"].items())])
        if set(VARIANTS) <= set(r["variants"]):
            one, c2f = r["variants"]["one pass"], r["variants"]["coarse to fine"]
            growth.append([r["run"], str(r["images"]), f"{one['masking_s']:.0f}", f"{c2f['masking_s']:.0f}",
                           f"{one['total_s']:.0f}", f"{c2f['total_s']:.0f}", f"{ps:.0f}",
                           f"{one['total_s'] / c2f['total_s']:.2f}x",
                           "yes" if c2f["total_s"] <= ps else f"no, {c2f['total_s'] / ps:.2f}x PatchSearch's time"])
    out = {
        "Quality and time per variant, PoisonCAM's other settings as the run's (seconds as computed)":
            markdown_table(["run", "images", "backdoor", "variant", "trigger det. acc", "(maps)", "precision",
                            "recall", "AUROC", "removed", "verdict (statistic vs threshold)", "masked forwards",
                            "masking s", "total s", "PatchSearch s", "PatchSearch / this"], quality),
        "Seconds per stage as computed": markdown_table(["run", "detector", "stages"], stages),
    }
    if growth:
        out["Growth with the number of images (features to removed list)"] = markdown_table(
            ["run", "images", "masking s, one pass", "masking s, coarse to fine", "total s, one pass",
             "total s, coarse to fine", "PatchSearch total s", "speed-up", "coarse to fine <= PatchSearch"], growth)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run folders of bench_detection.py")
    p.add_argument("--name", default="passes", help="results file name")
    p.add_argument("--variant", action="append", default=None,
                   help="NAME or NAME:key=value,key=value (repeatable); default: one pass and coarse to fine")
    args = p.parse_args()
    try:
        variants = dict(parse_variant(v) for v in args.variant) if args.variant else VARIANTS
    except ValueError as e:
        p.error(str(e))
    folders = [Path(r) for r in args.runs]
    for folder in folders:
        need = [folder / "run.json", folder / "results.json", folder / "detect-patchsearch" / "metrics.json"]
        missing = [str(x) for x in need if not x.is_file()]
        if missing:
            p.error(f"{folder} is not a finished bench_detection.py run folder (missing {', '.join(missing)})")
    rows = []
    for folder in folders:
        print(f"== {folder.name}", flush=True)
        rows.append(run_one(folder, variants))
    t = tables(rows)
    path = write_results(args.name, environment(), {"runs": [str(f) for f in folders], "variants": variants}, t, rows)
    return print_tables(t, path)


if __name__ == "__main__":
    sys.exit(main())
