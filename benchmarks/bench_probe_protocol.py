"""Why does the 10%-label probe ASR swing from 0 to 99% with the label draw? The probe's
preprocessing, side by side on the same features.

    python benchmarks/bench_probe_protocol.py --runs RUN [RUN ...] --draws 10

RUN is a run folder with ``poison/`` and ``threat/last.ckpt`` (``bench_recipe.py``'s or
``poisoncam run``'s). Features are extracted once per model (threat model and its random-init
reference, as in the backdoor check: same validation images, same patch and control places, seed
of the run); then linear probes are trained on the clean training features under each
preprocessing of ``PROTOCOLS``, at 10% of the labels on ``--draws`` draws and on every label. The
backdoor check (``eval/backdoor.py``) uses ``l2+std`` (SSL-Backdoor's CompRess protocol: L2
normalisation, then per-dimension standardisation with the labelled images' mean and std).
The table gives, per protocol, the probe ASR of patched vs control images (mean and each draw), the
share of draws where the patched ASR exceeds the control's by 30 points, and the clean accuracy; a
second table measures how far patched images sit from the labelled images' feature distribution
(the largest per-dimension z-score), the quantity standardisation divides by.
Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, write_results  # noqa: E402

# protocol -> train_linear_probe keywords
PROTOCOLS: Dict[str, Dict[str, bool]] = {
    "l2+std": {"l2_normalize": True, "standardize": True},
    "l2": {"l2_normalize": True, "standardize": False},
}


def features(folder: Path):
    """Features of the clean training images, validation, patched and control images for the run's
    threat model and its random-init reference (the backdoor check's inputs), with the run's seed
    (its ``args.json``, which the model is loaded from)."""
    from solo_poisoncam.engine.features import extract_features
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.backdoor import check_images, random_reference, validation_split
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.poison import PoisonedDataset, PoisonManifest

    poisoned = PoisonedDataset.from_manifest(PoisonManifest.load(folder / "poison"))
    manifest = poisoned.manifest
    model = load_threat_model(folder / "threat" / "last.ckpt")
    seed = int(model.config.get("seed", 0))
    sets = check_images(poisoned, validation_split(manifest.dataset, None), model.image_size, seed)
    sets.pop("train")  # the probes see the clean originals only
    runner = Runner(progress=False)
    out = {}
    for name, net in (("threat", model), ("random-init", random_reference(model, seed))):
        out[name] = {k: extract_features(net, v, runner) for k, v in sets.items()}
    labels = {"clean_train": sets["clean_train"].targets, "val": sets["val"].targets,
              "patched": sets["patched"].targets}
    return out, labels, manifest.target, len(poisoned.classes), seed


def probe_rows(feats: Dict[str, Any], labels: Dict[str, Any], target: int, num_classes: int, seed: int,
               draws: int, fraction: float) -> Tuple[Dict[str, Any], Dict[str, float]]:
    """Per protocol, the scores of ``draws`` probes at ``fraction`` of the labels and of one on every
    label; and how far the images sit in the check's own preprocessing (:func:`z_spread` of its first
    draw's probe and of the every-label one)."""
    import torch

    from solo_poisoncam.eval.backdoor import probe_scores
    from solo_poisoncam.eval.linear import probes_over_draws, train_linear_probe

    def score(probe):
        return probe_scores(probe, feats["val"], labels["val"], feats["patched"], labels["patched"], feats["control"],
                            target)

    x, y = feats["clean_train"], torch.as_tensor(labels["clean_train"])
    out, z = {}, {}
    for proto, kw in PROTOCOLS.items():
        probes = [p for _, p in probes_over_draws(x, y, num_classes, fraction, seed, draws, **kw)]
        every = train_linear_probe(x, y, num_classes, seed=seed, **kw)
        out[proto] = {"draws": [score(p) for p in probes], "every": score(every)}
        if kw["standardize"] and kw["l2_normalize"]:  # the check's protocol
            z = {**z_spread(probes[0], feats, f"{fraction:.0%}"), **z_spread(every, feats, "every")}
    return out, z


def z_spread(probe, feats: Dict[str, Any], budget: str) -> Dict[str, float]:
    """How far validation, patched and control images sit in ``probe``'s preprocessing (L2
    normalisation, then the labelled images' per-dimension mean and std): the median over images of
    the largest |z| over dimensions; and the ratio of the largest to the smallest std."""
    import torch

    with torch.no_grad():
        out = {f"{budget} {name}": float(probe.prepare(feats[name]).abs().amax(1).median())
               for name in ("val", "patched", "control")}
    out[f"{budget} std ratio"] = float(probe.std.max() / probe.std.min())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (poison/, threat/last.ckpt)")
    ap.add_argument("--draws", type=int, default=10, help="label draws at 10%% of the labels")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--name", default="probe-protocol")
    args = ap.parse_args(argv)
    from solo_poisoncam.eval.backdoor import TARGETED_MARGIN
    from solo_poisoncam.eval.metrics import mean_metrics
    env = environment()
    budget = f"{args.fraction:.0%}"
    results: List[Dict[str, Any]] = []
    rows, zrows = [], []
    for run in args.runs:
        folder = Path(run)
        for need in (folder / "poison" / "manifest.json", folder / "threat" / "last.ckpt"):
            if not need.is_file():
                ap.error(f"'{need}' does not exist: --runs takes run folders with poison/ and threat/last.ckpt")
        feats, labels, target, num_classes, seed = features(folder)
        for model, f in feats.items():
            probes, z = probe_rows(f, labels, target, num_classes, seed, args.draws, args.fraction)
            results.append({"run": str(folder), "model": model, "seed": seed, "probes": probes, "z": z})
            for proto, p in probes.items():
                d, mean = p["draws"], mean_metrics(p["draws"])
                hits = sum(r["asr"] - r["control"] >= TARGETED_MARGIN for r in d)
                rows.append([folder.name, model, proto, f"**{mean['asr']:.1%}** ({mean['control']:.1%})",
                             " / ".join(f"{r['asr']:.0%}" for r in d), f"{hits}/{len(d)}",
                             f"{mean['clean_acc1']:.1%}",
                             f"**{p['every']['asr']:.1%}** ({p['every']['control']:.1%})",
                             f"{p['every']['clean_acc1']:.1%}"])
            zrows.append([folder.name, model] + [f"{z[f'{b} {k}']:.1f}" for b in (budget, "every")
                                                 for k in ("val", "patched", "control")]
                         + [f"{z[f'{b} std ratio']:.0f}" for b in (budget, "every")])
            print(rows[-2], rows[-1], sep="\n", flush=True)
    head = ["run", "model", "probe preprocessing", f"{args.fraction:.0%} labels: probe ASR (control), mean",
            "patched ASR per draw", f"draws with margin >= {TARGETED_MARGIN * 100:.0f} pts", "clean acc",
            "every label: ASR (control)", "every label: clean acc"]
    zhead = ["run", "model"] + [f"{b}: {k}" for b in (budget, "every") for k in ("val", "patched", "control")] \
        + [f"{b}: max/min std" for b in (budget, "every")]
    path = write_results(args.name, env, {"protocols": PROTOCOLS, "draws": args.draws, "fraction": args.fraction},
                         {"Probe ASR by preprocessing (same features, same draws)": markdown_table(head, rows),
                          "Median over images of the largest per-dimension |z| (L2-normalised features, the "
                          "labelled images' mean and std)": markdown_table(zhead, zrows)}, results)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
