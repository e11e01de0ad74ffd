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


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--attack", "badnet"], "unknown attack 'badnet'"),
    (["--rate", "0"], r"rate must be in \(0, 1\]"),
    (["--rate", "1.2"], r"rate must be in \(0, 1\]"),
    (["--patch-size", "40"], "larger than the 32x32 image"),
    (["--target", "10"], "target class 10 does not exist"),
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
