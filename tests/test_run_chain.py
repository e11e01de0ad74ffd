"""The one-command chain on tiny real data: end to end, report, and resume after an interruption."""

import json
from pathlib import Path

import pytest
from helpers import needs_fashion_mnist, sized_image_folder

from solo_poisoncam import PoisonCamError
from solo_poisoncam.cli import main
from solo_poisoncam.pipeline.config import load_run_config

TINY = ["data.num_samples=300", "pretrain.epochs=1", "pretrain.batch_size=64", "detect.settings.flip_images=20",
        "detect.settings.flip_top=20", "detect.settings.test_images_size=40", "detect.settings.num_clusters=20",
        "detect.settings.classifier.models=1", "detect.settings.classifier.iters=40", "eval.label_fractions=[0.1]",
        "eval.val_images=200"]


def test_run_config_layers_and_errors(tmp_path):
    cfg = load_run_config()
    assert cfg["data"]["dataset"] == "fashion-mnist" and cfg["detect"]["methods"] == ["poisoncam", "patchsearch"]
    quick = load_run_config(quick=True)
    assert quick["data"]["num_samples"] == 3000 and quick["quick"] is True
    over = load_run_config(overrides=["pretrain.epochs=2", "poison.rate=1.0"])
    assert over["pretrain"]["epochs"] == 2 and over["poison"]["rate"] == 1.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector: {}\n")
    with pytest.raises(PoisonCamError, match="unknown sections"):
        load_run_config(str(bad))
    with pytest.raises(PoisonCamError, match="detect.methods"):
        load_run_config(overrides=["detect.methods=[strip]"])


def test_run_identity_ignores_switches_that_only_add_stages():
    from solo_poisoncam.io import hash_obj
    from solo_poisoncam.pipeline.run import _identity

    cfg = load_run_config()
    ident = lambda c: hash_obj(_identity(c))  # noqa: E731
    more = {**cfg, "retrain": {**cfg["retrain"], "enabled": not cfg["retrain"].get("enabled", True)},
            "reference": {**cfg["reference"], "clean": not cfg["reference"].get("clean", True)},
            "pretrain": {**cfg["pretrain"], "wandb": True}}
    assert ident(more) == ident(cfg)  # retraining, the clean reference and logging switched: the same run
    evaluated = {**cfg, "eval": {**cfg["eval"], "label_draws": 1, "label_fractions": [1.0]}}
    assert ident(evaluated) == ident(cfg)  # evaluated otherwise: the same run, its evaluations keyed apart
    other = {**cfg, "retrain": {**cfg["retrain"], "epochs": 99}}
    assert ident(other) != ident(cfg)  # what a retrained model is made with is part of the run
    assert ident({**cfg, "seed": cfg["seed"] + 1}) != ident(cfg)


@needs_fashion_mnist
def test_run_poison_stage_takes_the_patch_region(tmp_path):
    from solo_poisoncam.pipeline.run import Chain

    cfg = load_run_config(overrides=["data.num_samples=300", "poison.size=16", "poison.region=[0.1,0.9]"])
    m = Chain(cfg, tmp_path / "run", progress=False, log=lambda s: None).poison()
    assert m.attack["region"] == [0.1, 0.9]
    starts = {tuple(b[:2]) for b in m.boxes.tolist()}
    assert len(starts) > 5 and all(3 <= v <= 12 for xy in starts for v in xy)  # not the one central position


def test_retraining_is_keyed_by_the_kept_set(tmp_path, monkeypatch):
    """A detector whose kept set changed (a new default, a fixed bug) retrains beside the former model."""
    from solo_poisoncam.pipeline import run as run_module

    trained = []
    monkeypatch.setattr("solo_poisoncam.ssl.pretrain", lambda cfg: trained.append(cfg.out) or cfg.out)
    chain = run_module.Chain(load_run_config(), tmp_path / "run", progress=False, log=lambda s: None)
    kept = tmp_path / "run" / "detect-poisoncam" / "kept.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("0\n1\n2\n")
    first = chain.retrain("poisoncam")
    assert chain.retrain("poisoncam") == first  # the same kept set: the same folder (training resumes there)
    kept.write_text("0\n2\n")
    second = chain.retrain("poisoncam")
    assert second != first and Path(first).parent == Path(second).parent
    assert Path(first).name.startswith("retrain-poisoncam-") and Path(second).name.startswith("retrain-poisoncam-")


@needs_fashion_mnist
def test_run_end_to_end_then_resume_after_interruption(tmp_path, capsys, monkeypatch):
    from solo_poisoncam.pipeline import run as run_module

    out = tmp_path / "run"
    calls = {"detect": 0}
    real_detect = run_module.Chain.detect

    def counting_detect(self, method, ckpt):
        calls["detect"] += 1
        return real_detect(self, method, ckpt)

    def interrupted_retrain(self, method):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(run_module.Chain, "detect", counting_detect)
    monkeypatch.setattr(run_module.Chain, "retrain", interrupted_retrain)
    assert main(["run", "--out", str(out), "--quiet"] + TINY) == 130  # Ctrl-C: one line, exit 130
    assert "poisoncam run: interrupted; kept: finished stages in" in capsys.readouterr().err
    assert (out / "threat" / "args.json").is_file() and (out / "detect-poisoncam" / "metrics.json").is_file()
    # poisoncam detected, then its retraining was interrupted: patchsearch never started
    assert calls["detect"] == 1 and not (out / "report.html").exists()
    assert not (out / "detect-patchsearch").exists()
    ckpt_mtime = next((out / "threat").glob("*-ep=0.ckpt")).stat().st_mtime
    detect_mtime = (out / "detect-poisoncam" / "metrics.json").stat().st_mtime_ns
    monkeypatch.undo()
    monkeypatch.setattr(run_module.Chain, "detect", counting_detect)
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--quiet"] + TINY) == 0
    # resumed: the threat model and the first detection were reused (read back, not rewritten), the rest ran
    assert next((out / "threat").glob("*-ep=0.ckpt")).stat().st_mtime == ckpt_mtime
    assert calls["detect"] == 1 + 2  # asked again for both methods
    assert (out / "detect-poisoncam" / "metrics.json").stat().st_mtime_ns == detect_mtime
    assert (out / "detect-patchsearch" / "metrics.json").is_file() and len(list(out.glob("retrain-poisoncam-*"))) == 1
    stdout = capsys.readouterr().out
    assert "method" in stdout and "poisoncam" in stdout and "patchsearch" in stdout and "report:" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"undefended", "poisoncam", "patchsearch", "clean-data"}
    assert set(results["evaluations"]["undefended"]["budgets"]["0.1"]["linear"]) >= {"clean_acc1", "asr", "fp", "asr_control"}
    assert isinstance(results["backdoor"]["learned"], bool)
    # the targeted criterion against the clean-data model, from the two evaluations' 10% budgets
    beyond, ev = results["targeted_beyond_clean"], results["evaluations"]
    u, c = (ev[m]["budgets"]["0.1"]["linear"] for m in ("undefended", "clean-data"))
    assert beyond["margin_threat"] == u["asr"] - u["asr_control"] and beyond["margin_clean"] == c["asr"] - c["asr_control"]
    assert "Targeted beyond the clean-data model" in stdout
    page = (out / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page and "<svg" in page
    assert 'src="http' not in page and "Downstream" in page and "Backdoor strength" in page
    md = (out / "report.md").read_text()
    assert "| poisoncam |" in md and "| undefended |" in md and "Targeted beyond the clean-data model" in md
    # other settings in the same folder are refused
    assert main(["run", "--out", str(out), "--quiet", "pretrain.epochs=2"] + TINY[:1]) == 2


FOLDER = ["data.dataset=folder", "data.root=/src", "data.num_samples=null", "poison.write_folder=true"]


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=fashion-mnist", "data.root=/src", "data.num_samples=null", "poison.write_folder=true"],
     "needs data.dataset: folder and data.root: SRC"),
    (FOLDER[:2] + FOLDER[3:], r"data.num_samples: 10000 \(every image of the folder is written: set it to null\)"),
    (FOLDER + ["poison.attack=blend"], "poison.attack: blend do"),
    (FOLDER + ["poison.size=16"], r"poison.size \(the trigger's width is poison.width, in pixels\)"),
    (FOLDER + ["poison.region=[0.1,0.9]", "poison.jpeg=75"], "poison.jpeg; poison.region do"),
    (FOLDER + ["poison.rate_of=all", "poison.targeted=false"], "poison.rate_of: all; poison.targeted: False do"),
    (FOLDER + ["poison.width=0.2"], "poison.width must be a whole number"),
    (FOLDER + ["poison.quality=100"], r"poison.quality must be in \[1, 95\], got 100"),
    (["poison.width=50"], "poison.width apply only with poison.write_folder: true"),
])
def test_run_write_folder_refuses_what_a_written_folder_does_not_take(overrides, message, tmp_path):
    with pytest.raises(PoisonCamError, match=message):
        load_run_config(overrides=overrides)
    user = tmp_path / "user.yaml"  # a key set in the config file counts as set, like an override
    user.write_text("data: {dataset: folder, root: /src, num_samples: null}\npoison: {write_folder: true, size: 50}\n")
    with pytest.raises(PoisonCamError, match="poison.size"):
        load_run_config(str(user))
    assert load_run_config(overrides=FOLDER + ["poison.width=30"])["poison"]["width"] == 30  # the demo's size: not given


def test_run_writes_the_poisoned_folder_then_trains_detects_and_evaluates_on_it(tmp_path):
    """poison.write_folder: the chain writes the folder as `poisoncam poison --write-folder` does (every file
    JPEG, the trigger at poison.width px on each file), reuses it, and every later stage reads its manifest."""
    from PIL import Image

    from solo_poisoncam.data import build_dataset
    from solo_poisoncam.pipeline.run import Chain

    src = sized_image_folder(tmp_path / "src", per_class=(10, 12, 14), val=3)  # the backdoor check clusters into 30
    zoo = str(Path(__file__).resolve().parent.parent / "zoo_configs" / "run" / "folder-generator-cpu.yaml")
    tiny = [f"data.root={src}", "poison.width=30", "poison.target=1", "poison.rate=0.5", "pretrain.epochs=1",
            "pretrain.batch_size=16", "detect.methods=[poisoncam]", "detect.settings.num_clusters=6",
            "detect.settings.flip_images=8", "detect.settings.flip_top=8", "detect.settings.poisoncam.null_windows=50",
            "eval.label_fractions=[1.0]", "eval.label_draws=1"]
    cfg = load_run_config(zoo, overrides=tiny)
    out = tmp_path / "run"
    chain = Chain(cfg, out, progress=False, log=lambda s: None)
    m = chain.poison()
    written = build_dataset("folder", root=str(out / "poison"), size=32)
    # 0.5 of class 1's 12 images, class 1 only; 36 training files in all
    assert m.num_poisons == 6 and m.num_samples == 36 == len(written) and set(written.targets[m.indexes]) == {1}
    assert m.in_files and m.written["trigger_width"] == 30 and m.written["quality"] == cfg["poison"]["quality"]
    assert m.written["val_size"] == cfg["poison"]["val_size"] and m.attack["size"] == 30 / cfg["poison"]["val_size"]
    assert m.dataset["size"] == 32 and m.fingerprint == written.fingerprint()
    # boxes in each file's own pixels: 30 px wide whatever the file's size, and the files differ in size
    assert (m.boxes[:, 2] - m.boxes[:, 0] == 30).all() and len({tuple(s) for s in m.image_sizes.tolist()}) > 1
    for split, count in (("train", 36), ("val", 9), ("val_patched", 9)):
        files = sorted(f for f in (out / "poison" / split).rglob("*") if f.is_file())
        assert len(files) == count and all(f.suffix == ".JPEG" for f in files)
        for f in files:
            with Image.open(f) as img:
                assert img.format == "JPEG"
    stamp = (out / "poison" / "manifest.json").stat().st_mtime_ns
    assert chain.poison().to_dict() == m.to_dict()  # reused, not written again
    assert (out / "poison" / "manifest.json").stat().st_mtime_ns == stamp
    other = load_run_config(zoo, overrides=tiny + ["poison.width=20"])
    with pytest.raises(PoisonCamError, match="holds a poisoning with other settings"):
        Chain(other, out, progress=False, log=lambda s: None).poison()

    results = Chain(cfg, out, progress=False, log=lambda s: None).run()
    assert results["manifest"]["num_poisons"] == 6 and results["manifest"]["written"]["trigger_width"] == 30
    threat = json.loads((out / "threat" / "args.json").read_text())
    assert threat["data"]["spec"]["root"] == str((out / "poison").resolve())  # trained on the written files
    assert threat["poison"]["num_poisons"] == 6
    clean = json.loads((out / "clean" / "args.json").read_text())
    assert clean["data"]["spec"]["root"] == str(src) and clean["poison"] is None  # the originals, unpoisoned
    detected = results["detections"]["poisoncam"]["metrics"]
    assert detected["num_samples"] == 36 and detected["num_poisons"] == 6 and detected["localisation_all"]["count"] == 6
    assert set(results["models"]) == {"undefended", "poisoncam", "clean-data"}
    assert set(results["evaluations"]["undefended"]["budgets"]["1"]["linear"]) >= {"clean_acc1", "asr", "asr_control"}
    assert isinstance(results["backdoor"]["learned"], bool) and (out / "report.html").is_file()
