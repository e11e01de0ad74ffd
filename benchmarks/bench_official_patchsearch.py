"""This project's PatchSearch port side by side with the official PatchSearch code, same model, same images.

    pip install grad-cam matplotlib       # what the official code imports (not dependencies of this package)
    python benchmarks/bench_official_patchsearch.py --official PATH/TO/PatchSearch --run RUN_FOLDER [--seeds 0 1 2]
        [--official-seeds 10 11 12]
    python benchmarks/bench_official_patchsearch.py --reuse benchmarks/results/NAME.json --run RUN_FOLDER --seeds 0 1 2

``--official`` is a checkout of https://github.com/UCDvision/PatchSearch (measured at commit 39f2982);
nothing of it is copied here. ``--run`` is a run folder of ``poisoncam run`` (its ``poison/`` manifest and
``threat/last.ckpt``). The official ``patch_search_iterative_search.py`` runs unmodified, twice (features,
then the search, as its ``run_pipeline.sh``), with these shims around it, each needed only because it was
written for ImageNet on CUDA:

- ``get_model`` returns this project's threat model behind a view with the official interface
  (``layer4`` = the backbone's last spatial layer for Grad-CAM, ``fc`` appended, ImageNet-normalised input);
- ``Resize(256)`` / ``CenterCrop(224)`` are identities: the images are written as PNGs at the model's side;
- ``.cuda()`` is a no-op and faiss's GPU cloner returns the CPU index;
- ``GradCAM`` is pytorch-grad-cam's, returning ``(cam, outputs)`` as the authors' fork does;
- ``vits`` (ViT code that needs timm) is a stub: only the CNN path runs;
- ``--official-seeds``: the code fixes its seeds (``np.random.seed(10)``, ``torch.manual_seed(10)``, faiss's
  k-means seed 1234); seed ``s`` replaces them by ``s`` and ``1234 + s - 10`` while it runs, so 10 is the code
  as published and other seeds only change its random streams (paste places, cluster queues, k-means init).

``--reuse`` takes every official and port run of an earlier results file of this script (same model and
settings) and runs only the seeds it lacks.

Both sides get the same K, ``test_images_size`` and window. Compared: scores (AUROC, AP, Spearman),
top-k poison fraction, poisons with a non-zero score, trigger windows vs truth among the top 20, and
time per stage. Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, print_tables, write_results  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOPK = (20, 50, 100)


class OfficialView(nn.Module):
    """The threat model as the official code expects a torchvision ResNet: ImageNet-normalised input,
    ``layer4`` for Grad-CAM and an ``fc`` it replaces with its k-means head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.net = model
        self.layer4 = model.feature_layer
        self.fc = nn.Sequential()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.fc(self.net(x * self.std + self.mean))


def _window_boxes(cam: np.ndarray, w: int) -> np.ndarray:
    """Where the official ``extract_max_window`` takes its crop: the top-left corner of the first window
    with the highest Grad-CAM sum (its conv2d-and-argmax), as (x0, y0, x1, y1)."""
    sums = F.conv2d(torch.from_numpy(cam).float().unsqueeze(1), torch.ones(1, 1, w, w))
    ij = sums.flatten(1).argmax(-1)
    i, j = ij // sums.shape[-1], ij % sums.shape[-1]
    return torch.stack([j, i, j + w, i + w], 1).numpy()


@contextlib.contextmanager
def _cpu_shims():
    """``.cuda()`` is a no-op while the official code runs on this machine's CPU."""
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda


@contextlib.contextmanager
def _official_seed(seed: int):
    """The official ``main`` seeds numpy and torch with 10 (faiss's k-means: 1234); run it with ``seed`` instead."""
    np_seed, torch_seed = np.random.seed, torch.manual_seed
    np.random.seed = lambda v=None: np_seed(seed if v == 10 else v)
    torch.manual_seed = lambda v: torch_seed(seed if v == 10 else v)
    try:
        yield
    finally:
        np.random.seed, torch.manual_seed = np_seed, torch_seed


def _official_module(checkout: Path, model: nn.Module, timers: Dict[str, float], windows: List[np.ndarray],
                     seed: int = 10):
    import faiss
    import torchvision.transforms as T
    from pytorch_grad_cam import GradCAM as _GradCAM

    sys.modules.setdefault("vits", types.ModuleType("vits"))  # ViT code (needs timm); the CNN path never uses it
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    mod = importlib.import_module("patch_search_iterative_search")

    class GradCAM(_GradCAM):  # the authors' fork: accepts use_cuda, returns (cam, outputs)
        def __init__(self, model, target_layers, use_cuda=False, reshape_transform=None):
            super().__init__(model=model, target_layers=target_layers, reshape_transform=reshape_transform)

        def __call__(self, *args, **kwargs):
            cam = super().__call__(*args, **kwargs)
            return cam, self.outputs

    class CpuFaiss:
        def __getattr__(self, name):
            return getattr(faiss, name)

        GpuMultipleClonerOptions = staticmethod(lambda: types.SimpleNamespace())
        index_cpu_to_all_gpus = staticmethod(lambda index, co=None: index)

        @staticmethod
        def Clustering(d, k):  # noqa: N802 (faiss's name); its default seed 1234 is the published run
            clus = faiss.Clustering(d, k)
            clus.seed = 1234 + seed - 10
            return clus

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    extract = mod.extract_max_window

    def recorded_extract(cam_images, inputs, window_w=30):
        windows.append(_window_boxes(cam_images, window_w))
        return extract(cam_images, inputs, window_w)

    identity = lambda *a, **k: (lambda img: img)  # noqa: E731
    mod.transforms = types.SimpleNamespace(Compose=T.Compose, Resize=identity, CenterCrop=identity,
                                           ToTensor=T.ToTensor, Normalize=T.Normalize)
    mod.GradCAM = GradCAM
    mod.faiss = CpuFaiss()
    # a trainable copy, as the torchvision model it loads (the threat model comes frozen; pytorch-grad-cam
    # only records gradients of outputs that require them)
    mod.get_model = lambda arch, path: OfficialView(copy.deepcopy(model)).requires_grad_(True).eval()
    mod.faiss_kmeans = timed("kmeans", mod.faiss_kmeans)
    mod.get_test_images = timed("test_images", mod.get_test_images)
    mod.get_candidate_patches = timed("gradcam", mod.get_candidate_patches)
    mod.extract_max_window = recorded_extract
    return mod


def run_official(checkout: Path, model, images, labels, is_poison, k: int, test_images_size: int, window: int,
                 work: Path, seed: int = 10) -> Dict[str, Any]:
    """The official search on ``images`` (uint8 (N, 3, S, S)) with its seeds replaced by ``seed`` (10: as
    published); scores, windows of its top 100, timings."""
    from PIL import Image

    folder = work / "images"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for j in range(len(images)):
        path = folder / (f"{j:06d}" + ("_HTBA_trigger" if is_poison[j] else "") + ".png")
        Image.fromarray(images[j].permute(1, 2, 0).numpy()).save(path)
        lines.append(f"{path} {int(labels[j])}")
    (work / "train.txt").write_text("\n".join(lines) + "\n")
    weights = work / "threat_model.pth"  # a name without HTBA_trigger (read as the clean-experiment path)
    weights.write_bytes(b"")
    timers: Dict[str, float] = {}
    windows: List[np.ndarray] = []
    sys.modules.pop("patch_search_iterative_search", None)  # a fresh module (and shims) per seed
    mod = _official_module(checkout, model, timers, windows, seed)
    argv = ["patch_search_iterative_search.py", "--arch", "resnet18", "--weights", str(weights),
            "--train_file", str(work / "train.txt"), "--num_clusters", str(k), "--test_images_size",
            str(test_images_size), "--window_w", str(window), "--prune_clusters", "--use_cached_feats", "-j", "0"]
    old_argv, old_cwd = sys.argv, os.getcwd()
    calls = []
    try:
        os.chdir(checkout)  # it reads metadata_files/ relative to its checkout
        with _cpu_shims(), _official_seed(seed):
            for _ in range(2):  # 1: features (cached, then it exits), 2: the search (run_pipeline.sh)
                sys.argv = argv
                start = time.perf_counter()
                mod.main()
                calls.append(time.perf_counter() - start)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    save = next(work.glob("patch_search_iterative_search_*"))
    scores = np.load(save / "poison-scores.npy")
    top = scores.argsort()[::-1][:100]  # the order its last step draws the top-100 patches in
    search = calls[1] - sum(timers.values())
    return {"scores": scores, "top": top, "top_windows": windows[-1], "folder": str(save),
            "timings": {"features_s": calls[0], "kmeans_s": timers.get("kmeans", 0.0),
                        "test_images_s": timers.get("test_images", 0.0), "gradcam_s": timers.get("gradcam", 0.0),
                        "flip_and_rest_s": search, "total_s": sum(calls)}}


def compare(scores: np.ndarray, is_poison: np.ndarray, top: np.ndarray, top_windows: np.ndarray, true_boxes) -> Dict:
    """Score and window quality of one detector (``top``: its ranking's first positions with their windows)."""
    from solo_poisoncam.eval.metrics import auroc, average_precision, localisation_metrics

    order = np.argsort(-scores, kind="stable")
    out = {"auroc": auroc(scores, is_poison), "ap": average_precision(scores, is_poison),
           "poisons_nonzero": int((scores[is_poison] != 0).sum()), "num_poisons": int(is_poison.sum())}
    for k in TOPK:
        out[f"top{k}"] = float(is_poison[order[:k]].mean())
    t20, w20 = top[:20], top_windows[:20]
    hit = is_poison[t20]
    loc = localisation_metrics(w20[hit], np.array([true_boxes[int(j)] for j in t20[hit]]).reshape(-1, 4))
    out["top20_iou50"] = loc["trigger_detection_accuracy"]
    return out


def _runs_of(made: Dict[str, Any]) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """The official and port runs of an earlier results file, by seed (also the first format: one official run
    with seed 10, the ports in ``settings["port_seeds"]`` order, without scores)."""
    results = made["results"]
    if "official_runs" in results:
        return {who: {int(s_): r for s_, r in results[f"{who}_runs"].items()} for who in ("official", "port")}
    return {"official": {10: {"metrics": results["official"], "timings": results["official_timings"],
                              "scores": results.get("official_scores")}},
            "port": {s_: {"metrics": m, "timings": t, "scores": None}
                     for s_, m, t in zip(made["settings"]["port_seeds"], results["port"], results["port_timings"])}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", type=Path, default=None, help="a checkout of UCDvision/PatchSearch")
    p.add_argument("--run", required=True, type=Path, help="a poisoncam run folder (poison/, threat/last.ckpt)")
    p.add_argument("--num-clusters", type=int, default=None, help="K (default: the detector's, 10 x classes)")
    p.add_argument("--test-images-size", type=int, default=1000, help="official default 1000")
    p.add_argument("--window", type=int, default=None, help="window_w in px (default: 60/224 of the side)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="the port's seeds, one run each")
    p.add_argument("--official-seeds", type=int, nargs="+", default=[10],
                   help="the official code's seeds, one run each (10: as published; others replace its fixed seeds)")
    p.add_argument("--label", default=None, help="the setting's name in the table")
    p.add_argument("--reuse", "--reuse-official", type=Path, default=None, metavar="JSON", dest="reuse",
                   help="take the runs of an earlier results file of this script (same run and settings); "
                        "only the seeds it lacks are run")
    p.add_argument("--name", default="patchsearch-official")
    args = p.parse_args(argv)
    # the runs of an earlier call of this script (its settings are checked against this call's below)
    made = json.loads(args.reuse.read_text()) if args.reuse else None
    prev = _runs_of(made) if made else {"official": {}, "port": {}}
    checkout_ok = args.official is not None and (args.official / "patch_search_iterative_search.py").is_file()
    if not checkout_ok and set(args.official_seeds) - set(prev["official"]):
        p.error(f"--official {args.official} is not a PatchSearch checkout (no patch_search_iterative_search.py)")
    ckpt = args.run / "threat" / "last.ckpt"
    if not ckpt.is_file() or not (args.run / "poison" / "manifest.json").is_file():
        p.error(f"--run {args.run} has no threat/last.ckpt and poison/manifest.json (a poisoncam run folder)")

    from solo_poisoncam.data.indexed import IndexedImages
    from solo_poisoncam.detect.config import PATCHSEARCH_WINDOW, DetectConfig
    from solo_poisoncam.detect.pipeline import run_detection
    from solo_poisoncam.engine.runner import Runner
    from solo_poisoncam.eval.detection import score_detection, true_boxes_in_input
    from solo_poisoncam.models.threat_model import load_threat_model
    from solo_poisoncam.poison import PoisonedDataset, PoisonManifest

    manifest = PoisonManifest.load(args.run / "poison")
    data = PoisonedDataset.from_manifest(manifest)
    model = load_threat_model(ckpt).eval()
    side = model.image_size
    images = IndexedImages(data, size=side)
    x = images.as_tensor()
    labels = np.asarray([data.targets[i] for i in images.indexes]) if hasattr(data, "targets") else \
        np.asarray([data[int(i)][1] for i in images.indexes])
    is_poison = manifest.is_poison()[images.indexes]
    boxes = true_boxes_in_input(manifest, side)
    true_by_pos = {j: boxes[int(i)] for j, i in enumerate(images.indexes) if is_poison[j]}
    classes = [c for c in getattr(data, "classes", []) if c != "unlabelled"]
    k = args.num_clusters or 10 * len(classes)
    window = args.window or max(1, round(PATCHSEARCH_WINDOW * side))

    if made:  # reused runs must come from the same model and settings
        same = {key: made["settings"].get(key) for key in ("run", "K", "test_images_size", "window_px")}
        if same != {"run": str(args.run), "K": k, "test_images_size": args.test_images_size, "window_px": window}:
            p.error(f"--reuse {args.reuse} was made with other settings: {same}")
    officials, ports = {}, {}
    for seed in args.official_seeds:
        if seed in prev["official"]:
            officials[seed] = prev["official"][seed]
            continue
        with tempfile.TemporaryDirectory() as tmp:
            off = run_official(args.official.resolve(), model, x, labels, is_poison, k, args.test_images_size, window,
                               Path(tmp), seed=seed)
        m = compare(off["scores"], is_poison, off["top"], off["top_windows"], true_by_pos)
        m["scored"] = int((off["scores"] != 0).sum())  # it keeps no "scored" mask: non-zero is a lower bound
        officials[seed] = {"metrics": m, "timings": off["timings"], "scores": off["scores"].tolist()}
    for seed in args.seeds:  # the port's random streams (queues, paste places, k-means init) by seed
        if seed in prev["port"]:
            ports[seed] = prev["port"][seed]
            continue
        cfg = DetectConfig.from_dict(dict(method="patchsearch", num_clusters=k, test_images_size=args.test_images_size,
                                           window=window, remove="none", seed=seed))
        start = time.perf_counter()
        r = score_detection(run_detection(model, data, cfg, Runner(progress=False)), manifest)
        total = time.perf_counter() - start
        top = np.argsort(-r.scores, kind="stable")[:100]
        m = compare(r.scores, is_poison, top, r.windows[top], true_by_pos)
        m["scored"] = int(r.scored.sum())
        t = r.timings
        ports[seed] = {"metrics": m, "scores": r.scores.tolist(),
                       "timings": {"features_s": t.get("features_s", 0), "kmeans_s": t.get("kmeans_s", 0),
                                   "gradcam_s": t.get("gradcam_s", 0), "flip_and_rest_s": t.get("search_s", 0),
                                   "total_s": total}}

    from scipy.stats import spearmanr  # noqa: PLC0415 (scikit-learn's dependency, which the official code needs)

    pairs = [(a["scores"], b["scores"]) for a in officials.values() for b in ports.values()
             if a.get("scores") is not None and b.get("scores") is not None]
    rho = [round(float(spearmanr(a, b).statistic), 4) for a, b in pairs]  # every official x port pair
    label = args.label or args.run.name
    head = ["setting", "code", "AUROC", "AP", *[f"top-{k_}" for k_ in TOPK], "poisons > 0", "scored",
            "top-20 IoU>=0.5"]
    keys = ["auroc", "ap", *[f"top{k_}" for k_ in TOPK]]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    def row(who, m):
        return [label, who, *[f(m[k_]) for k_ in keys], f"{m['poisons_nonzero']}/{m['num_poisons']}", str(m["scored"]),
                f(m["top20_iou50"])]

    def mean(runs):
        return {k_: float(np.mean([r["metrics"][k_] for r in runs.values()])) for k_ in keys}

    def spread(runs):
        return [label, "", *[f"{min(r['metrics'][k_] for r in runs.values()):.2f}-"
                             f"{max(r['metrics'][k_] for r in runs.values()):.2f}" for k_ in keys], "", "", ""]

    rows = [row(f"official, seed {s_}" + (" (as published)" if s_ == 10 else ""), r["metrics"])
            for s_, r in officials.items()]
    if len(officials) > 1:
        rows += [[label, "official, mean", *[f(mean(officials)[k_]) for k_ in keys], "", "", ""],
                 spread(officials)]
    rows += [row(f"port, seed {s_}", r["metrics"]) for s_, r in ports.items()]
    if len(ports) > 1:
        rows += [[label, "port, mean", *[f(mean(ports)[k_]) for k_ in keys], "", "", ""], spread(ports)]
    gap = {k_: mean(ports)[k_] - mean(officials)[k_] for k_ in keys}
    rows.append([label, "port (mean) - official (mean)", *[f"{gap[k_]:+.3f}" for k_ in keys], "", "", ""])
    stages = ["features_s", "kmeans_s", "test_images_s", "gradcam_s", "flip_and_rest_s", "total_s"]
    trows = [[label, who, *[f"{tt[s_]:.1f}" if s_ in tt else "-" for s_ in stages]]
             for who, tt in [(f"official, seed {s_}", r["timings"]) for s_, r in officials.items()]
             + [(f"port, seed {s_}", r["timings"]) for s_, r in ports.items()]]
    settings = {"run": str(args.run), "checkpoint": str(ckpt), "K": k, "test_images_size": args.test_images_size,
                "window_px": window, "side": side, "images": len(x), "poisons": int(is_poison.sum()),
                "spearman_scores": rho, "port_seeds": args.seeds, "official_seeds": args.official_seeds}
    tables = {"Scores and windows (same model, same images; the spread row: min-max over seeds)":
              markdown_table(head, rows),
              "Time per stage, seconds (official: features = its first call; flip_and_rest = its search loop "
              "without Grad-CAM, plus its top-100 output; port: Grad-CAM of every image)":
              markdown_table(["setting", "code", *[s_[:-2] for s_ in stages]], trows)}
    raw = {"official_runs": {str(s_): r for s_, r in officials.items()}, "port_runs": {str(s_): r for s_, r in ports.items()},
           "gap": gap, "reused_from": str(args.reuse) if args.reuse else None}
    path = write_results(args.name, environment(), settings, tables, raw)
    return print_tables(tables, path)

if __name__ == "__main__":
    sys.exit(main())
