"""Detection settings side by side on any threat-model checkpoints, through ``poisoncam detect`` itself.

    python benchmarks/bench_checkpoints.py --out runs/ckpt-bench \\
        --model "seed 11:CKPT:manifest=POISON/manifest.json" \\
        --model "clean data:CKPT:dataset=npz,root=PATH/cifar10_subset.npz" \\
        --variant "default" --variant "occluders 0.25+0.5:occluder=[0.25, 0.5]" [--patchsearch [NAME ...]]

``--model "NAME:CKPT:manifest=M"``: a poisoned set (its manifest: quality against the truth);
``"NAME:CKPT:dataset=D,root=R[,num_samples=N]"``: a set with no poison (what is removed is a false
removal). ``--variant "NAME[:key=value;key=value]"``: ``--set`` fields of ``poisoncam detect``
(``;`` between fields, since a list value holds commas). Each (model, variant) is one ``poisoncam
detect`` call into ``--out``/<model>/<variant> (reused when its metrics.json exists). Tabulates the
label-free verdict, removed, precision, recall, trigger detection accuracy, AUROC, seconds and the
backdoor check of each model (measured in its first call). ``CKPT`` = ``random-init@PATH[@SEED]``: the
network of PATH's architecture and normalisation with random weights, seeded as the backdoor check's
random-init reference (``eval/backdoor.py: random_reference``, seed 0 as in ``poisoncam detect``), written
to ``--out``/<model>/random-init/: what a detector says on a model that learned nothing. Run it alone on the machine: seconds are as computed.
Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, parse_variant, print_tables, write_results  # noqa: E402


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def parse_model(text: str) -> Dict[str, Any]:
    name, ckpt, data = text.split(":", 2)
    fields = dict(kv.split("=", 1) for kv in data.split(",") if kv)
    if "manifest" not in fields and not {"dataset", "root"} <= set(fields):
        raise ValueError(f"--model '{text}': give manifest=M, or dataset=D,root=R")
    return {"name": name, "ckpt": ckpt, "data": fields}


def random_init_checkpoint(spec: str, out: Path) -> str:
    """``random-init@PATH[@SEED]`` -> a checkpoint (and its args.json) of PATH's network, randomly initialised.
    A missing or unreadable PATH raises load_threat_model's PoisonCamError (a ValueError)."""
    from solo_poisoncam.eval.backdoor import random_reference
    from solo_poisoncam.io import save_torch, write_json
    from solo_poisoncam.models.threat_model import load_threat_model

    _, src, *seed = spec.split("@")
    if seed and not (len(seed) == 1 and seed[0].isdigit()):
        raise ValueError(f"'{spec}': give random-init@PATH or random-init@PATH@SEED with an integer SEED")
    ref = random_reference(load_threat_model(src), int(seed[0]) if seed else 0)
    ckpt = out / "random-init" / "last.ckpt"
    write_json(ckpt.parent / "args.json", ref.config)
    save_torch(ckpt, {"state_dict": {f"backbone.{k}": v for k, v in ref.backbone.state_dict().items()}})
    return str(ckpt)


def detect(model: Dict[str, Any], variant: Dict[str, Any], method: str, out: Path, check: bool = True) -> Dict[str, Any]:
    folder = out / _slug(model["name"]) / _slug(f"{method}-{variant['name']}")
    if not (folder / "metrics.json").is_file():
        cmd = ["poisoncam", "detect", "--ckpt", model["ckpt"], "--method", method, "--out", str(folder), "--quiet"]
        d = model["data"]
        if "manifest" in d:
            cmd += ["--manifest", d["manifest"]]
        else:
            cmd += ["--dataset", d["dataset"], "--root", d["root"]]
            cmd += ["--num-samples", d["num_samples"]] if "num_samples" in d else []
        for s in variant["sets"]:
            cmd += ["--set", s]
        cmd += [] if check else ["--no-backdoor-check"]  # the model's check is the first call's
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return json.loads((folder / "metrics.json").read_text())


def row(model: Dict[str, Any], variant: str, method: str, m: Dict[str, Any]) -> List[str]:
    met, v = m["metrics"], m.get("verdict") or m["metrics"].get("verdict") or {}
    poisoned = "manifest" in model["data"]
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    verdict = "n/a" if not v else ("found" if v.get("found") else "none") + (
        f" (coherence {v['coherence']:.3f} vs {v['coherence_threshold']:.3f}"
        + (f", flip {v['flip']:.3f} vs {v['flip_threshold']:.3f}" if v.get("flip") is not None else "") + ")"
        if "coherence" in v else "")
    return [model["name"], variant, method, verdict, str(met.get("num_removed")),
            f(met.get("precision")) if poisoned else "-", f(met.get("recall")) if poisoned else "-",
            f(met.get("trigger_detection_accuracy")) if poisoned else "-", f(met.get("auroc")) if poisoned else "-",
            f"{m['timings'].get('total_s', 0):.0f}"]


def backdoor_row(model: Dict[str, Any], m: Dict[str, Any]) -> List[str]:
    b = m.get("backdoor")
    if not b:
        return [model["name"], "not measured (no poisons)"] + [""] * 3
    t = b["threat"]
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    from solo_poisoncam.eval.backdoor import describe_outcome

    draws = " / ".join(pct(a) for a in t.get("probe_asr_patched_draws") or [])
    return [model["name"], describe_outcome(b),
            f"{pct(t['patched_to_poison_cluster'])} ({pct(t['control_to_poison_cluster'])})",
            f"{pct(t['probe_asr_patched'])} ({pct(t['probe_asr_control'])}); draws {draws}",
            f"{pct(t.get('probe_all_asr_patched'))} ({pct(t.get('probe_all_asr_control'))})"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME:CKPT:manifest=M or NAME:CKPT:dataset=D,root=R")
    p.add_argument("--variant", action="append", default=None, help="NAME[:key=value;key=value] (default: default)")
    p.add_argument("--patchsearch", nargs="*", default=None, metavar="NAME",
                   help="also PatchSearch at its defaults, on the models named (none named: on each)")
    p.add_argument("--out", default="runs/ckpt-bench", help="detection folders (reused)")
    p.add_argument("--name", default="checkpoints", help="results file name")
    args = p.parse_args()
    try:
        models = [parse_model(t) for t in args.model]
    except ValueError as e:
        p.error(str(e))
    for mo in models:
        if mo["ckpt"].startswith("random-init@"):
            try:
                ckpt = random_init_checkpoint(mo["ckpt"], Path(args.out) / _slug(mo["name"]))
            except ValueError as e:  # a bad spec; a missing or torn PATH (PoisonCamError is a ValueError)
                p.error(f"--model {mo['name']}: {e}")
            mo["random_init_of"], mo["ckpt"] = mo["ckpt"], ckpt
        if not Path(mo["ckpt"]).is_file():
            p.error(f"no checkpoint at {mo['ckpt']}")
    variants = [parse_variant(t) for t in (args.variant or ["default"])]
    out, rows, raw, bd = Path(args.out), [], [], {}
    for mo in models:
        runs = [(v["name"], "poisoncam", v) for v in variants]
        if args.patchsearch is not None and (not args.patchsearch or mo["name"] in args.patchsearch):
            runs.append(("default", "patchsearch", {"name": "default", "sets": []}))
        for i, (vname, method, v) in enumerate(runs):
            m = detect(mo, v, method, out, check=i == 0)
            rows.append(row(mo, vname, method, m))
            raw.append({"model": mo, "variant": v, "method": method, "metrics": m["metrics"],
                        "timings": m["timings"], "backdoor": m.get("backdoor")})
            if i == 0:
                bd[mo["name"]] = backdoor_row(mo, m)
    t = {"Detection (verdict: the label-free one, with its statistics against their thresholds)": markdown_table(
            ["model", "variant", "method", "verdict", "removed", "precision", "recall", "trigger det. acc", "AUROC",
             "s"], rows),
         "Backdoor check of each model (patched vs control; probe: 10% of the labels, mean of the draws)": markdown_table(
            ["model", "verdict", "patched -> poison cluster", "probe ASR, 10% of the labels", "probe ASR, every label"],
            list(bd.values()))}
    path = write_results(args.name, environment(), {"models": models, "variants": variants,
                                                    "patchsearch": args.patchsearch}, t, raw)
    return print_tables(t, path)


if __name__ == "__main__":
    sys.exit(main())
