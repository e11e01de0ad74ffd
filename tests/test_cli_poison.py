import json

import numpy as np
import pytest
from helpers import needs_fashion_mnist
from PIL import Image

from solo_poisoncam.cli import main


@needs_fashion_mnist
def test_poison_cli_writes_manifest_grid_and_summary(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["poison", "--dataset", "fashion-mnist", "--attack", "patch", "--target", "0", "--rate", "0.5",
               "--seed", "0", "--num-samples", "1000", "--out", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("poisoned 50/1000 images (5.00%)") and "manifest.json" in line
    m = json.loads((out / "manifest.json").read_text())
    assert m["num_poisons"] == 50 and m["target"] == 0 and m["attack"]["name"] == "patch"
    assert m["dataset"]["name"] == "fashion-mnist" and m["dataset"]["num_samples"] == 1000
    grid = np.asarray(Image.open(out / "examples.png"))
    assert grid.shape[0] > 100 and (grid == [0, 220, 0]).all(-1).sum() > 100  # boxes drawn in green
    assert Image.open(out / "trigger.png").size == (64, 64)


@needs_fashion_mnist
def test_poison_cli_region_spreads_the_patch(tmp_path):
    out = tmp_path / "p"
    assert main(["poison", "--num-samples", "1000", "--patch-size", "16", "--region", "0.1", "0.9",
                 "--out", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["attack"]["region"] == [0.1, 0.9] and "jpeg" not in m["attack"]
    boxes = np.array([p["box"] for p in m["poisons"]])
    assert boxes[:, :2].min() >= 3 and boxes[:, :2].max() <= 12 and len(np.unique(boxes[:, :2], axis=0)) > 20


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--attack", "badnet"], "unknown attack 'badnet'"),
    (["--rate", "0"], r"rate must be in \(0, 1\]"),
    (["--rate", "1.2"], r"rate must be in \(0, 1\]"),
    (["--patch-size", "40"], "larger than the 32x32 image"),
    (["--target", "10"], "target class 10 does not exist"),
    (["--region", "0.6", "0.4"], "patch region must be"),
    (["--jpeg", "0"], "jpeg quality must be"),
    (["--trigger", "/nonexistent/t.png"], "does not exist"),
])
@needs_fashion_mnist
def test_poison_cli_bad_input_one_error_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "p"
    rc = main(["poison", "--num-samples", "200", "--out", str(out)] + args)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("error:") == 1
    assert __import__("re").search(message, err), err
    assert not out.exists()


@needs_fashion_mnist
def test_poison_cli_unreadable_trigger_file(tmp_path, capsys):
    bad = tmp_path / "t.png"
    bad.write_bytes(b"\x89PNG broken")
    rc = main(["poison", "--num-samples", "200", "--trigger", str(bad), "--out", str(tmp_path / "p")])
    assert rc == 2 and "cannot read trigger file" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@needs_fashion_mnist
def test_poison_cli_refuses_to_overwrite_other_settings_and_reruns_the_same(tmp_path, capsys):
    out = tmp_path / "p"
    base = ["poison", "--num-samples", "200", "--out", str(out)]
    assert main(base + ["--rate", "0.5"]) == 0
    before = (out / "manifest.json").read_text()
    assert main(base + ["--rate", "0.5"]) == 0  # same settings: the same manifest again
    assert json.loads((out / "manifest.json").read_text())["poisons"] == json.loads(before)["poisons"]
    capsys.readouterr()
    assert main(base + ["--rate", "0.2"]) == 2
    assert "holds a poison manifest of other settings" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["rate"] == 0.5  # untouched


def _two_class_folder(root):
    """An ImageFolder of two classes, four 32 px PNGs each."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 50 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_poison_cli_corrupt_image_writes_nothing(tmp_path, capsys):
    root = _two_class_folder(tmp_path / "data")
    (root / "a" / "0.png").write_bytes((root / "a" / "0.png").read_bytes()[:60])  # truncated: header only
    out = tmp_path / "p"
    rc = main(["poison", "--dataset", "folder", "--root", str(root), "--target", "0", "--rate", "1.0",
               "--out", str(out)])
    assert rc == 2 and "cannot read image" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_poison_cli_trigger_directory_and_resize_note(tmp_path, capsys):
    root = _two_class_folder(tmp_path / "data")
    rc = main(["poison", "--dataset", "folder", "--root", str(root), "--trigger", str(tmp_path), "--out",
               str(tmp_path / "p")])
    assert rc == 2 and "is a directory" in capsys.readouterr().err
    trig = tmp_path / "t.png"
    Image.fromarray(np.full((80, 80, 3), 200, np.uint8)).save(trig)
    rc = main(["poison", "--dataset", "folder", "--root", str(root), "--trigger", str(trig), "--out",
               str(tmp_path / "p")])
    assert rc == 0 and "80x80 px trigger is pasted at 7x7 px" in capsys.readouterr().out


def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path, capsys, monkeypatch):
    import solo_poisoncam.commands.detect as detect_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(detect_cmd, "run", interrupted)
    argv = ["detect", "--ckpt", "m.ckpt", "--dataset", "folder", "--root", "x y", "--out", str(tmp_path / "o")]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("poisoncam detect: interrupted; kept: stage cache in ")
    assert err[0].endswith("resume with: poisoncam detect --ckpt m.ckpt --dataset folder --root 'x y' --out "
                           f"{tmp_path / 'o'}")
