"""Script level: the real, unmodified solo-learn entry scripts on a tiny Fashion-MNIST export."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("solo.methods", reason="solo-learn is not importable: see docs/solo-learn.md")

import torch  # noqa: E402
from helpers import needs_fashion_mnist, sized_image_folder  # noqa: E402
from solo_testing import SOLO_LEARN_ROOT, needs_solo_root  # noqa: E402

from solo_poisoncam.solo_adapter.scripts import absolute_config_path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "zoo_configs" / "pretrain" / "fashion-mnist"

# solo-learn's CPU settings (docs/solo-learn.md), plus a tiny BYOL
CPU = ["accelerator=cpu", 'devices="1"', "strategy=auto", "sync_batchnorm=False", "precision=32", "max_epochs=1",
       "optimizer.batch_size=16", "wandb.enabled=False", "auto_resume.enabled=False", "data.num_workers=0",
       "backbone.name=resnet18"]


def run(cmd, cwd, timeout=300):
    env = {**os.environ, "WANDB_MODE": "disabled", "SOLO_LEARN_ROOT": SOLO_LEARN_ROOT, "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    start = time.time()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc, time.time() - start


def only(pattern_dir: Path, glob: str) -> Path:
    found = sorted(pattern_dir.glob(glob))
    assert len(found) == 1, f"{glob} in {pattern_dir}: {found}"
    return found[0]


@needs_solo_root
@needs_fashion_mnist
def test_main_pretrain_poison_detect_then_cluster_head_and_linear(tmp_path):
    data = tmp_path / "fashion-mnist-32"
    run([sys.executable, REPO / "scripts" / "export_fashion_mnist.py", "--out", data, "--classes", "0-5",
         "--num-samples", "72", "--num-val-samples", "24"], cwd=tmp_path)
    models = tmp_path / "trained_models"
    common = CPU + [f"data.train_path={data / 'train'}", f"checkpoint.dir={models}"]

    # Option B: the unmodified main_pretrain.py; the Hydra plugin registers solo-poisoncam
    proc, seconds = run([sys.executable, Path(SOLO_LEARN_ROOT) / "main_pretrain.py", "--config-path", ZOO,
                         "--config-name", "byol.yaml", *common, "method_kwargs.proj_hidden_dim=64",
                         "method_kwargs.pred_hidden_dim=64", "+poison=patch", "poison.rate=0.5", "poison.target=3",
                         "+detect=poisoncam", "detect.num_clusters=6", "detect.poisoncam.flip_images=8", "detect.poisoncam.flip_top=16",
                         "detect.progress=False", "detect.classifier.iters=10", "detect.classifier.models=1"],
                        cwd=tmp_path)
    run_dir = only(models / "byol", "*")
    ckpt = only(run_dir, "*.ckpt")
    args = json.loads((run_dir / "args.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())  # beside the checkpoint and args.json
    assert manifest["num_samples"] == 72 and manifest["num_poisons"] == 6 == args["poison"]["num_poisons"]
    assert manifest["target_name"] == "3_Dress" and manifest["dataset"]["name"] == "folder"
    assert "[solo-poisoncam] poisoned 6/72 images" in proc.stdout

    out = run_dir / "detect-poisoncam"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "poisoncam" and metrics["metrics"]["num_samples"] == 72
    assert {"precision", "recall", "auroc", "trigger_detection_accuracy"} <= set(metrics["metrics"])
    assert metrics["solo"]["method"] == "byol" and metrics["manifest"] == str(run_dir / "manifest.json")
    assert len(np.load(out / "scores.npy")) == 72
    removed = (out / "removed.txt").read_text().split()
    kept = (out / "kept.txt").read_text().split()
    assert sorted(map(int, removed + kept)) == list(range(72))
    assert metrics["solo"]["checkpoint"] == str(ckpt.resolve()) and f"ep={metrics['solo']['epoch']}" in ckpt.name
    assert metrics["backdoor"]["settings"]["val_split"] == "val"  # the export's val/ beside train/
    assert set(metrics["backdoor"]["criteria"]) == {"cluster", "knn", "probe", "probe_all"}

    # `poisoncam detect` on the saved checkpoint with the hook's settings writes the same outputs
    cli = tmp_path / "cli-detect"
    run([sys.executable, "-m", "solo_poisoncam.cli", "detect", "--ckpt", ckpt, "--manifest", run_dir / "manifest.json",
         "--out", cli, "--quiet", "--set", "num_clusters=6", "--set", "flip_images=8", "--set", "flip_top=16",
         "--set", "classifier.iters=10", "--set", "classifier.models=1"], cwd=tmp_path)
    assert (cli / "removed.txt").read_text() == (out / "removed.txt").read_text()
    assert np.array_equal(np.load(cli / "scores.npy"), np.load(out / "scores.npy"))
    assert np.array_equal(np.load(cli / "windows.npy"), np.load(out / "windows.npy"))
    cli_metrics = json.loads((cli / "metrics.json").read_text())
    assert cli_metrics["metrics"]["num_removed"] == metrics["metrics"]["num_removed"]
    for view in ("threat", "reference"):
        a, b = cli_metrics["backdoor"][view], metrics["backdoor"][view]
        assert set(a) == set(b)
        for key in a:  # numbers and per-draw lists alike (approx takes no list inside a dict)
            assert a[key] == (pytest.approx(b[key], abs=1e-6) if isinstance(b[key], (int, float, list)) else b[key])

    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # still main_linear-loadable
    record = state["callbacks"]["ManifestCallback"]
    assert record["poisoned"] and record["num_poisons"] == 6

    # Option A: the wrapper entry point trains cluster_head from that checkpoint, replaying the poisons
    _, seconds_a = run([sys.executable, "-m", "solo_poisoncam.solo_adapter.pretrain", "--config-path", ZOO,
                        "--config-name", "cluster_head.yaml", *common, f"method_kwargs.threat_checkpoint='{ckpt}'",
                        "method_kwargs.num_clusters=6", "method_kwargs.kmeans_iters=5", "+poison=patch",
                        f"poison.manifest={run_dir / 'manifest.json'}"], cwd=tmp_path)
    head_dir = only(models / "cluster_head", "*")
    head_args = json.loads((head_dir / "args.json").read_text())
    assert head_args["method"] == "cluster_head" and head_args["method_kwargs"]["threat_checkpoint"] == str(ckpt)
    replay = json.loads((head_dir / "manifest.json").read_text())
    assert replay["poisons"] == manifest["poisons"] and replay["fingerprint"] == manifest["fingerprint"]
    head_state = torch.load(only(head_dir, "*.ckpt"), map_location="cpu", weights_only=True)["state_dict"]
    assert head_state["head.weight"].shape[0] == 6 and head_state["pseudo_labels"].shape == (72,)

    # that cluster head as the detector's clustering model
    via_head = tmp_path / "detect-with-head"
    head_ckpt = only(head_dir, "*.ckpt")
    run([sys.executable, "-m", "solo_poisoncam.cli", "detect", "--ckpt", ckpt, "--manifest", run_dir / "manifest.json",
         "--out", via_head, "--quiet", "--no-backdoor-check", "--set", f"head_checkpoint='{head_ckpt}'",
         "--set", "flip_images=8", "--set", "flip_top=16", "--set", "classifier.iters=10",
         "--set", "classifier.models=1"], cwd=tmp_path)
    head_metrics = json.loads((via_head / "metrics.json").read_text())
    assert head_metrics["config"]["head_checkpoint"] == str(head_ckpt)
    assert len(np.load(via_head / "scores.npy")) == 72

    # main_linear.py through the wrapper (no registration needed, but it must not get in the way)
    _, seconds_l = run([sys.executable, "-m", "solo_poisoncam.solo_adapter.linear", "--config-path",
                        REPO / "zoo_configs" / "linear" / "fashion-mnist", "--config-name", "byol.yaml",
                        *common, f"data.val_path={data / 'val'}", f"pretrained_feature_extractor='{ckpt}'"],
                       cwd=tmp_path)
    assert only(only(models / "linear", "*"), "*.ckpt").name.startswith("byol-fashion-mnist-linear")
    print(f"main_pretrain byol+detect {seconds:.0f}s, wrapper cluster_head {seconds_a:.0f}s, "
          f"wrapper linear {seconds_l:.0f}s")


@needs_solo_root
def test_main_pretrain_on_a_written_folder_scores_against_its_manifest(tmp_path):
    """SSL-Backdoor's way: the poisoned copy written once (`poisoncam poison --write-folder`), solo-learn's own
    main_pretrain.py trained on it through data.train_path, and the detection hook scoring against its manifest."""
    src = sized_image_folder(tmp_path / "src", per_class=(10, 12, 14), val=3)  # mixed sizes, 70-200 px
    out = tmp_path / "poisoned"
    run([sys.executable, "-m", "solo_poisoncam.cli", "poison", "--write-folder", "--dataset", "folder", "--root", src,
         "--target", "1", "--rate", "0.5", "--patch-size", "24", "--size", "32", "--val-size", "96", "--out", out],
        cwd=tmp_path)
    written = json.loads((out / "manifest.json").read_text())
    assert written["num_poisons"] == 6  # 0.5 of class 1's 12 images
    models = tmp_path / "trained_models"
    proc, _ = run([sys.executable, Path(SOLO_LEARN_ROOT) / "main_pretrain.py", "--config-path", ZOO, "--config-name",
                   "byol.yaml", *CPU, f"data.train_path={out / 'train'}", f"checkpoint.dir={models}",
                   "method_kwargs.proj_hidden_dim=64", "method_kwargs.pred_hidden_dim=64",
                   f"+poison.manifest={out / 'manifest.json'}", "+detect=poisoncam", "detect.num_clusters=6",
                   "detect.poisoncam.flip_images=8", "detect.poisoncam.flip_top=8", "detect.progress=False"], cwd=tmp_path)
    assert "[solo-poisoncam] poisoned 6/36 images" in proc.stdout
    run_dir = only(models / "byol", "*")
    args = json.loads((run_dir / "args.json").read_text())
    assert args["poison"]["num_poisons"] == 6 and args["poison"]["target"] == 1  # the manifest's, not the default 0
    beside = json.loads((run_dir / "manifest.json").read_text())  # as solo read the files: their own pixels
    assert beside["poisons"] == written["poisons"] and beside["written"] == written["written"]
    assert beside["dataset"]["root"] == str((out / "train").resolve()) and beside["dataset"]["size"] is None
    metrics = json.loads((run_dir / "detect-poisoncam" / "metrics.json").read_text())
    m = metrics["metrics"]
    assert m["num_poisons"] == 6 and m["num_samples"] == 36 and m["localisation_all"]["count"] == 6
    assert {"precision", "recall", "auroc"} <= set(m) and metrics["manifest"] == str(run_dir / "manifest.json")
    assert metrics["backdoor"]["settings"]["val_split"] == "val"  # the written val/ beside train/
    assert len(np.load(run_dir / "detect-poisoncam" / "scores.npy")) == 36
    record = torch.load(only(run_dir, "*.ckpt"), map_location="cpu", weights_only=True)["callbacks"]["ManifestCallback"]
    assert record["poisoned"] and record["num_poisons"] == 6


def test_relative_config_path_resolves_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "zoo").mkdir()
    monkeypatch.chdir(tmp_path)
    solo_root = tmp_path / "solo"
    solo_root.mkdir()
    (solo_root / "scripts").mkdir()
    assert absolute_config_path(["--config-path", "zoo", "x=1"], solo_root) == ["--config-path", str(tmp_path / "zoo"),
                                                                                "x=1"]
    assert absolute_config_path(["--config-path=zoo"], solo_root) == [f"--config-path={tmp_path / 'zoo'}"]
    assert absolute_config_path(["-cp", "scripts"], solo_root) == ["-cp", "scripts"]  # solo's own: untouched
