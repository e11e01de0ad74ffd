"""Summarise benchmarks/solo_real_run.sh: the +detect hook beside `poisoncam detect` on the same
checkpoint, the solo-trained cluster head beside the default head, main_linear's clean accuracy and
ASR (the saved linear head evaluated on the clean and the patched val folders). Writes
benchmarks/results/solo-learn-run.md and .json.

    python benchmarks/solo_report.py OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, write_results  # noqa: E402


def _seconds(log: Path):
    t = Path(str(log) + ".time")
    return float(t.read_text().split()[0]) if t.is_file() else None


def linear_accuracy(ckpt: Path, folder: Path, mean, std) -> float:
    """Top-1 of the backbone + linear classifier that main_linear.py saved, on an ImageFolder at its
    own size with the data's statistics (the pipeline the plugin gave main_linear; without W&B solo
    logs its val_acc1 nowhere). Class indexes: the folders present, as torchvision numbers them."""
    import torch
    from torchvision import datasets, transforms

    from solo_poisoncam.models.backbones import create_backbone
    from solo_poisoncam.models.threat_model import load_backbone_state, read_run_config

    cfg = read_run_config(ckpt)
    backbone = create_backbone(cfg["backbone"]["name"])
    load_backbone_state(backbone, ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    head = torch.nn.Linear(state["classifier.weight"].shape[1], state["classifier.weight"].shape[0])
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), tf), batch_size=512)
    right = total = 0
    with torch.no_grad():
        for x, y in loader:
            right += int((head(backbone.eval()(x)).argmax(1) == y).sum())
            total += len(y)
    return right / total


def main(argv=None) -> int:
    from solo_poisoncam.io import read_json

    out = Path((argv or sys.argv[1:])[0])
    run = sorted((out / "trained_models" / "byol").glob("*/"))[0]
    hook_dir, cli_dir, head_dir = run / "detect-poisoncam", out / "cli-detect", out / "head-detect"
    hook, cli, head = (read_json(d / "metrics.json") for d in (hook_dir, cli_dir, head_dir))
    same = {
        "removed.txt": (hook_dir / "removed.txt").read_text() == (cli_dir / "removed.txt").read_text(),
        "scores.npy": bool(np.array_equal(np.load(hook_dir / "scores.npy"), np.load(cli_dir / "scores.npy"))),
        "windows.npy": bool(np.array_equal(np.load(hook_dir / "windows.npy"), np.load(cli_dir / "windows.npy"))),
        "backdoor": hook["backdoor"]["threat"] == cli["backdoor"]["threat"],
    }
    keys = ["trigger_detection_accuracy", "precision", "recall", "f1", "auroc", "auprc", "num_removed"]
    fmt = lambda v: "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    det_rows = [[name, *(fmt(m["metrics"].get(k)) for k in keys), fmt(m["timings"].get("total_s"))]
                for name, m in (("+detect hook (default k-means head)", hook), ("poisoncam detect, same checkpoint", cli),
                                ("poisoncam detect, head_checkpoint = solo cluster_head", head))]
    bd = hook["backdoor"]
    t, r = bd["threat"], bd["reference"]
    pct = lambda x: f"{x:.1%}"  # noqa: E731
    bd_rows = [[view, pct(m["purity"]), f"{pct(m['patched_to_poison_cluster'])} ({pct(m['control_to_poison_cluster'])})",
                f"{pct(m['knn_asr_patched'])} ({pct(m['knn_asr_control'])})",
                f"{pct(m['probe_asr_patched'])} ({pct(m['probe_asr_control'])})", pct(m["probe_clean_acc1"])]
               for view, m in (("threat model", t), ("random-init reference", r))]
    lin_ckpt = sorted((out / "trained_models" / "linear").glob("*/byol-linear-clean-*.ckpt"))[-1]
    mean, std = [0.219] * 3, [0.3318] * 3  # zoo_configs/linear/fashion-mnist: data.mean / data.std
    lin = {"clean top-1 (2,000 val images)": linear_accuracy(lin_ckpt, out / "fmnist32" / "val", mean, std),
           "ASR (1,800 patched non-target val images predicted as the target)":
               linear_accuracy(lin_ckpt, out / "patched-val", mean, std)}
    times = {step: _seconds(out / f"{step}.log") for step in
             ("pretrain", "cli-detect", "cluster-head", "head-detect", "linear-clean")}
    tables = {
        "Backdoor strength of the solo-learn threat model (the hook's backdoor check)":
            f"verdict: learned={bd['learned']}, criteria {bd['criteria']}, targeted={bd['targeted']}\n\n"
            + markdown_table(["model", "purity", "patched -> poison cluster (control)", "kNN-ASR (control)",
                              "probe ASR (control)", "probe clean acc"], bd_rows),
        "Detection: the hook, the CLI on the same checkpoint, the solo-trained cluster head":
            markdown_table(["run", *keys, "total s"], det_rows)
            + "\n\nhook == CLI, byte for byte: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items()),
        "main_linear.py through the plugin (32 px pipeline, 100% of the clean labels, 20 epochs)":
            markdown_table(["metric", "value"], [[k, "n/a" if v is None else f"{v:.1%}"] for k, v in lin.items()]),
        "Wall time per step (2 CPU cores shared with other work)":
            markdown_table(["step", "s"], [[k, "n/a" if v is None else f"{v:.0f}"] for k, v in times.items()]),
    }
    path = write_results("solo-learn-run", environment(), {"out": str(out), "run": str(run)}, tables,
                         {"hook": hook["metrics"], "cli": cli["metrics"], "head": head["metrics"], "same": same,
                          "backdoor": bd, "linear": lin, "times": times})
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
