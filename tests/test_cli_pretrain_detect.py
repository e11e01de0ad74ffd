"""The built-in backend and the detector through the CLI, on real Fashion-MNIST (tiny, CPU)."""

import json

import numpy as np
import pytest
from helpers import needs_fashion_mnist

from solo_poisoncam import PoisonCamError
from solo_poisoncam.cli import main

FAST_DETECT = ["--num-clusters", "10", "--flip-images", "20", "--set", "classifier.models=1",
               "--set", "classifier.iters=40", "--set", "flip_top=30", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    assert main(["poison", "--num-samples", "300", "--patch-size", "10", "--out", str(root / "poison")]) == 0
    assert main(["pretrain", "--poison", str(root / "poison"), "--epochs", "1", "--batch-size", "64",
                 "--out", str(root / "tm"), "--quiet"]) == 0
    ckpt = next((root / "tm").glob("*-ep=0.ckpt"))
    return root, ckpt


@needs_fashion_mnist
def test_pretrain_writes_solo_layout_backdoor_report_and_resumes(trained, capsys):
    root, ckpt = trained
    args = json.loads((root / "tm" / "args.json").read_text())
    assert args["method"] == "byol" and args["backbone"]["name"] == "cnn_small" and args["backend"] == "builtin"
    assert args["poison"]["num_poisons"] == 15 and args["data"]["num_samples"] == 300
    assert (root / "tm" / "manifest.json").is_file() and (root / "tm" / "last.ckpt").is_file()
    import csv

    rows = list(csv.DictReader(open(root / "tm" / "logs" / "metrics.csv")))
    losses = [float(r["train_byol_loss_epoch"]) for r in rows if r.get("train_byol_loss_epoch")]
    assert len(losses) == 1 and np.isfinite(losses[0])  # one epoch, its mean BYOL loss
    assert {int(r["epoch"]) for r in rows} == {0}
    report = json.loads((root / "tm" / "backdoor.json").read_text())
    assert set(report["threat"]) >= {"purity", "patched_to_poison_cluster", "knn_asr_patched", "probe_asr_patched"}
    assert report["reference"]["kind"] == "random-init" and isinstance(report["learned"], bool)
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]  # solo main_linear loads so
    assert any(k.startswith("backbone.") for k in state)
    capsys.readouterr()
    # the same command again reuses the finished run
    assert main(["pretrain", "--poison", str(root / "poison"), "--epochs", "1", "--batch-size", "64",
                 "--out", str(root / "tm"), "--quiet"]) == 0
    assert str(ckpt) in capsys.readouterr().out
    # other settings in the same folder are refused
    assert main(["pretrain", "--poison", str(root / "poison"), "--epochs", "1", "--lr", "0.01", "--batch-size", "64",
                 "--out", str(root / "tm"), "--quiet"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err


@needs_fashion_mnist
def test_pretrain_extends_a_finished_run_to_more_epochs(trained, tmp_path, capsys):
    import csv
    import shutil

    root, _ = trained
    tm = tmp_path / "tm"
    shutil.copytree(root / "tm", tm)
    assert main(["pretrain", "--poison", str(root / "poison"), "--epochs", "2", "--batch-size", "64",
                 "--out", str(tm), "--no-backdoor-check"]) == 0
    assert (tm / "byol-fashion-mnist-poisoned-ep=1.ckpt").is_file()
    printed = capsys.readouterr().out
    assert "byol-fashion-mnist-poisoned-ep=1.ckpt" in printed
    # stdout is no terminal here: one plain line for the one epoch trained, no progress bar
    lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("epoch 2/2: train_byol_loss ") and "\r" not in printed
    assert json.loads((tm / "args.json").read_text())["max_epochs"] == 2
    epochs = {int(r["epoch"]) for r in csv.DictReader(open(tm / "logs" / "metrics.csv")) if r.get("epoch")}
    assert epochs == {0, 1}  # trained on from epoch 1, the first epoch's log kept
    capsys.readouterr()
    assert main(["pretrain", "--poison", str(root / "poison"), "--epochs", "3", "--batch-size", "64",
                 "--scheduler", "cosine", "--out", str(tm), "--quiet"]) == 2  # other settings: still refused


@needs_fashion_mnist
def test_detect_writes_every_output(trained, capsys, tmp_path):
    root, ckpt = trained
    out = tmp_path / "det"
    rc = main(["detect", "--ckpt", str(ckpt), "--manifest", str(root / "poison" / "manifest.json"),
               "--out", str(out)] + FAST_DETECT)
    assert rc == 0
    line = capsys.readouterr().out
    assert line.startswith("poisoncam: removed") and "backdoor" in line
    # the backdoor report lands in --out, and nothing new is written beside the checkpoint
    before = (root / "tm" / "backdoor.json").stat().st_mtime_ns
    assert json.loads((out / "backdoor.json").read_text())["settings"]["val_split"] == "test"
    assert (root / "tm" / "backdoor.json").stat().st_mtime_ns == before
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    assert m["num_poisons"] == 15 and m["num_samples"] == 300
    assert {"precision", "recall", "f1", "auroc", "auprc", "precision_at_20", "trigger_detection_accuracy",
            "localisation_all", "localisation_top20"} <= set(m)
    # the cluster screen, then coarse to fine: 4 images of each cluster and the images of the top clusters, at
    # least 2 x flip_top = 60, under 16 + 9 coarse occluders (sides 1/4 and 1/2); the top 20% of those (at
    # least flip_top 30) under the 49 + 25 of the full stride
    t = doc["timings"]
    masked = t["masked_images"]
    assert 60 <= masked < 300 and t["device"] == "cpu"
    from solo_poisoncam.detect.config import PoisonCamConfig
    from solo_poisoncam.detect.poisoncam import fine_count  # by hand in tests/detect/test_pipeline.py

    assert t["masked_forwards"] == masked * (16 + 9) + fine_count(PoisonCamConfig(flip_top=30), masked) * (49 + 25)
    assert "backdoor" in doc and "definitions" in doc
    removed = [int(v) for v in (out / "removed.txt").read_text().split()]
    kept = [int(v) for v in (out / "kept.txt").read_text().split()]
    assert sorted(removed + kept) == list(range(300)) and len(removed) == m["num_removed"]
    assert np.load(out / "scores.npy").shape == (300,) and (out / "gallery.png").is_file()


@needs_fashion_mnist
def test_detect_without_manifest_on_user_data(trained, tmp_path):
    _, ckpt = trained
    out = tmp_path / "det"
    assert main(["detect", "--ckpt", str(ckpt), "--dataset", "fashion-mnist", "--num-samples", "200",
                 "--out", str(out), "--remove", "none"] + FAST_DETECT) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "precision" not in doc["metrics"] and doc["metrics"]["num_samples"] == 200 and "backdoor" not in doc


@needs_fashion_mnist
def test_detect_bad_inputs_one_error_nothing_written(trained, tmp_path, capsys):
    root, ckpt = trained
    man = str(root / "poison" / "manifest.json")
    cases = [
        (["--ckpt", str(ckpt), "--manifest", man, "--dataset", "fashion-mnist", "--num-samples", "400"],
         "dataset of 300 images"),
        (["--ckpt", str(ckpt), "--manifest", man, "--num-clusters", "1000"], "larger than the number of images"),
        (["--ckpt", str(root / "missing.ckpt"), "--manifest", man], "does not exist"),
        (["--ckpt", str(ckpt), "--dataset", "folder", "--root", str(tmp_path / "nothing")], "does not exist"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        rc = main(["detect", "--out", str(out), "--quiet"] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and message in err, err
        assert not out.exists()
    # a checkpoint whose args.json names another backbone
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.ckpt").write_bytes(ckpt.read_bytes())
    args = json.loads((root / "tm" / "args.json").read_text())
    args["backbone"]["name"] = "cnn"
    (bad / "args.json").write_text(json.dumps(args))
    rc = main(["detect", "--ckpt", str(bad / "x.ckpt"), "--manifest", man, "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2 and "does not match the backbone" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # a truncated checkpoint file
    (bad / "args.json").write_text((root / "tm" / "args.json").read_text())
    (bad / "x.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    rc = main(["detect", "--ckpt", str(bad / "x.ckpt"), "--manifest", man, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "is truncated or not a PyTorch checkpoint" in err and err.count("error:") == 1
    assert not (tmp_path / "out").exists()


def test_detect_flags_map_to_detect_config():
    import argparse

    from solo_poisoncam.commands.detect import add_arguments, config_overrides
    from solo_poisoncam.detect.config import DetectConfig

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--ckpt", "x", "--out", "o", "--remove", "match", "--force-remove", "--amp", "bf16",
                         "--set", "probe.samples=256", "--set", "verdict_min=9", "--set", "classifier.models=2"])
    cfg = DetectConfig.from_dict(config_overrides(args))
    assert (cfg.remove, cfg.force_remove, cfg.amp, cfg.poisoncam.verdict_min) == ("match", True, "bf16", 9)
    assert cfg.probe.samples == 256 and cfg.classifier.models == 2
    plain = DetectConfig.from_dict(config_overrides(p.parse_args(["--ckpt", "x", "--out", "o"])))
    assert (plain.remove, plain.force_remove, plain.amp) == ("match", False, "off")
    assert (plain.poisoncam.coarse_stride, plain.poisoncam.coarse_top) == (0.25, 0.2)
    # null / None, as the YAML configs write it, is one pass; a word where a number belongs is one clear error
    for word in ("null", "None"):
        one = config_overrides(p.parse_args(["--ckpt", "x", "--out", "o", "--set", f"coarse_stride={word}"]))
        assert DetectConfig.from_dict(one).poisoncam.coarse_stride is None
    bad = config_overrides(p.parse_args(["--ckpt", "x", "--out", "o", "--set", "coarse_stride=fine"]))
    with pytest.raises(PoisonCamError, match="poisoncam.coarse_stride='fine' must be a number or null"):
        DetectConfig.from_dict(bad)
    with pytest.raises(SystemExit):
        p.parse_args(["--ckpt", "x", "--out", "o", "--amp", "half"])


@needs_fashion_mnist
def test_detect_reports_the_verdict_and_force_remove_overrides_it(trained, capsys, tmp_path):
    root, ckpt = trained
    man = str(root / "poison" / "manifest.json")
    assert main(["detect", "--ckpt", str(ckpt), "--manifest", man, "--out", str(tmp_path / "a")] + FAST_DETECT) == 0
    line = capsys.readouterr().out
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]
    v = m["verdict"]
    assert v["text"] in line and {"repeated", "learned", "coherence", "coherence_threshold"} <= set(v)
    # a 1-epoch model on 300 images: the verdict says none, nothing is removed, and every output says so
    assert not v["found"] and v["text"].startswith("no backdoor found")
    assert v["removal_skipped"] and "nothing removed" in line
    assert m["num_removed"] == 0 and (tmp_path / "a" / "removed.txt").read_text().split() == []
    assert len((tmp_path / "a" / "kept.txt").read_text().split()) == m["num_samples"] == 300
    assert main(["detect", "--ckpt", str(ckpt), "--manifest", man, "--out", str(tmp_path / "b"), "--force-remove"]
                + FAST_DETECT) == 0
    fm = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    forced = fm["verdict"]
    assert forced["found"] == v["found"] and not forced["removal_skipped"]
    # forced: the removal ran although the verdict said none (at least the top candidates' own images go)
    removed = (tmp_path / "b" / "removed.txt").read_text().split()
    kept = (tmp_path / "b" / "kept.txt").read_text().split()
    assert fm["num_removed"] == len(removed) > 0 and len(removed) + len(kept) == 300
    assert not set(removed) & set(kept)
    # the verdict decides what is removed, not the scores: both runs scored every image alike
    assert np.array_equal(np.load(tmp_path / "a" / "scores.npy"), np.load(tmp_path / "b" / "scores.npy"))
