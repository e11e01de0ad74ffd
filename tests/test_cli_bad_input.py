"""Bad input to poison / pretrain (issue 39): one line, exit 2, before any work, nothing partial left."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from solo_poisoncam import PoisonCamError
from solo_poisoncam.cli import main
from solo_poisoncam.io import LOCK_NAME, run_lock

TINY_TRAIN = ["--epochs", "1", "--batch-size", "4", "--quiet"]


def _folder(root, sizes=((16, 16),), per_class=4, classes=("a", "b")):
    """An ImageFolder of random PNGs; image i of a class has ``sizes[i % len(sizes)]`` (width, height)."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _one_error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.count("error:") == 1 and "Traceback" not in err, err
    return err


def _poison(data, out, *extra):
    return main(["poison", "--dataset", "folder", "--root", str(data), "--rate", "1", "--out", str(out), *extra])


def _pretrain(data, out, *extra):
    return main(["pretrain", "--dataset", "folder", "--root", str(data), "--out", str(out), *TINY_TRAIN, *extra])


@pytest.mark.parametrize("command", [_poison, _pretrain])
def test_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys, monkeypatch, command):
    data = _folder(tmp_path / "data")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    err = _one_error(capsys, command(data, afile))
    assert f"--out '{afile}' is a file, not a folder; choose another --out" in err
    assert afile.read_text() == "mine"
    err = _one_error(capsys, command(data, afile / "run"))
    assert f"--out '{afile / 'run'}' cannot be created: '{afile}' is a file" in err
    # root may write anywhere, so the permission the check reads is simulated
    import solo_poisoncam.commands.common as common

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(common.os, "access", lambda p, mode: os.path.realpath(p) != str(locked))
    err = _one_error(capsys, command(data, locked / "run"))
    assert f"--out '{locked / 'run'}' is not writable (no write permission on '{locked}')" in err
    assert list(locked.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["data", "locked",
                                                                                          "notes.txt"]


def test_unreadable_images_are_refused_by_every_command_naming_them(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    (data / "b" / "junk.jpg").write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (data / "b" / "empty.png").write_bytes(b"")
    expected = (f"image folder '{data}': cannot read image file(s) 'b/empty.png' (empty file), "
                "'b/junk.jpg' (not an image); remove or replace them")
    err = _one_error(capsys, _poison(data, tmp_path / "p"))
    assert expected in err
    err = _one_error(capsys, _pretrain(data, tmp_path / "tm", "--size", "16"))
    assert expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_pretrain_on_images_of_mixed_sizes_names_size_before_training(tmp_path, capsys, monkeypatch):
    data = _folder(tmp_path / "data", sizes=((16, 16), (24, 20)))
    err = _one_error(capsys, _pretrain(data, tmp_path / "tm"))
    assert (f"the images in '{data}' differ in size (2 sizes, e.g. 16x16 and 24x20 px) and training needs one: "
            "give --size S") in err
    # a poisoned folder served at its own sizes: the same line, and --size serves the poisons at one side
    assert _poison(data, tmp_path / "p") == 0
    capsys.readouterr()
    err = _one_error(capsys, main(["pretrain", "--poison", str(tmp_path / "p"), "--out", str(tmp_path / "tm"),
                                   "--no-backdoor-check", *TINY_TRAIN]))
    assert "differ in size" in err and "give --size S" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "p"]
    assert main(["pretrain", "--poison", str(tmp_path / "p"), "--out", str(tmp_path / "tm"), "--size", "16",
                 "--no-backdoor-check", *TINY_TRAIN]) == 0
    assert json.loads((tmp_path / "tm" / "args.json").read_text())["data"]["image_size"] == 16
    assert not (tmp_path / "tm" / LOCK_NAME).exists()


def test_pretrain_without_a_held_out_split_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import solo_poisoncam.ssl

    data = _folder(tmp_path / "data")
    assert _poison(data, tmp_path / "p") == 0
    capsys.readouterr()
    monkeypatch.setattr(solo_poisoncam.ssl, "pretrain", lambda cfg: pytest.fail("trained before the check"))
    err = _one_error(capsys, main(["pretrain", "--poison", str(tmp_path / "p"), "--out", str(tmp_path / "tm"),
                                   *TINY_TRAIN]))
    assert f"no held-out split for image folder '{data}'" in err
    assert "(the backdoor check after training reads the held-out split; --no-backdoor-check skips it)" in err
    assert not (tmp_path / "tm").exists()


def test_failed_pretrain_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    data = _folder(tmp_path / "data")
    # refused input: found before the first file of the run is written
    err = _one_error(capsys, _pretrain(data, tmp_path / "tm", "--batch-size", "64"))
    assert "8 training images is fewer than one batch of 64; lower --batch-size" in err
    assert not (tmp_path / "tm").exists()
    # a failure inside training before the first checkpoint: what the run wrote is removed again
    import lightning.pytorch as pl

    def crash(self, *a, **k):
        (tmp_path / "tm" / "logs").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("boom")

    monkeypatch.setattr(pl.Trainer, "fit", crash)
    with pytest.raises(RuntimeError, match="boom"):
        _pretrain(data, tmp_path / "tm", "--size", "16")
    assert not (tmp_path / "tm").exists()
    # a folder of the user's own keeps its files
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(RuntimeError, match="boom"):
        _pretrain(data, tmp_path / "mine", "--size", "16")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("with_args", [False, True])
def test_a_text_file_as_checkpoint_is_named_as_such(tmp_path, capsys, with_args):
    from solo_poisoncam.models.threat_model import load_threat_model

    (tmp_path / "run").mkdir()
    ckpt = tmp_path / "run" / "model.ckpt"
    ckpt.write_text("epoch,loss\n0,1.5\n")
    if with_args:
        (tmp_path / "run" / "args.json").write_text(json.dumps({"backbone": {"name": "cnn_small"}}))
    data = tmp_path / "data"
    _folder(data / "train"), _folder(data / "test")
    err = _one_error(capsys, main(["eval", "--ckpt", str(ckpt), "--dataset", "folder", "--root", str(data),
                                   "--out", str(tmp_path / "e")]))
    assert f"'{ckpt}' is not a checkpoint (not a file written by torch.save)" in err
    assert "weights_only" not in err and not (tmp_path / "e").exists()
    for cfg in (None, {"backbone": {"name": "cnn_small"}}):  # detect and the solo-learn hook load it so too
        with pytest.raises(PoisonCamError, match="is not a checkpoint"):
            load_threat_model(ckpt, cfg=cfg)


def test_a_checkpoint_of_other_objects_never_advises_weights_only_false(tmp_path):
    import datetime

    from solo_poisoncam.models.backbones import create_backbone
    from solo_poisoncam.models.threat_model import load_backbone_state

    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "when": datetime.date(2024, 1, 1)}, ckpt)
    with pytest.raises(PoisonCamError) as e:
        load_backbone_state(create_backbone("cnn_small"), ckpt)
    msg = str(e.value)
    assert "holds objects other than weights (Unsupported global: GLOBAL datetime.date)" in msg
    assert "weights_only" not in msg and "\n" not in msg
    torn = tmp_path / "torn.ckpt"
    torch.save({"state_dict": create_backbone("cnn_small").state_dict()}, torn)
    torn.write_bytes(torn.read_bytes()[:5000])
    with pytest.raises(PoisonCamError, match="the file is truncated or not a PyTorch checkpoint") as e:
        load_backbone_state(create_backbone("cnn_small"), torn)
    assert "weights only" not in str(e.value).lower().replace("_", " ") and "\n" not in str(e.value)
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {}}, legacy, _use_new_zipfile_serialization=False)  # a pickle, not a zip: accepted
    with pytest.raises(PoisonCamError, match="no 'backbone.\\*' weights"):
        load_backbone_state(create_backbone("cnn_small"), legacy)


@pytest.mark.parametrize("command", [_poison, _pretrain])
def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys, command):
    data = _folder(tmp_path / "data")
    out = tmp_path / "o"
    with run_lock(out):  # another run holds OUT
        err = _one_error(capsys, command(data, out, "--size", "16"))
        assert f"'{out}' is in use by another run (pid {os.getpid()}); wait for it to finish or choose another --out" \
            in err
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    assert not out.exists()  # the lock's folder goes with it
    # a lock file left by a killed run holds no lock: the next run takes it
    out.mkdir()
    (out / LOCK_NAME).write_text("999999999")
    assert command(data, out, "--size", "16") == 0
    assert not (out / LOCK_NAME).exists()


def _detect(data, out, *extra, ckpt="never-read.ckpt"):
    return main(["detect", "--ckpt", str(ckpt), "--dataset", "folder", "--root", str(data), "--size", "16",
                 "--num-clusters", "2", "--out", str(out), "--quiet", *extra])


def test_detect_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys, monkeypatch):
    """Checked before the checkpoint is read (it does not exist here) and before any work."""
    test_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys, monkeypatch, _detect)


def test_detect_refuses_a_second_run_on_its_out_and_bad_settings_before_work(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    assert _pretrain(data, tmp_path / "tm", "--size", "16", "--no-backdoor-check") == 0
    ckpt = tmp_path / "tm" / "last.ckpt"
    capsys.readouterr()
    out = tmp_path / "o"
    with run_lock(out):
        err = _one_error(capsys, _detect(data, out, ckpt=ckpt))
        assert f"'{out}' is in use by another run (pid {os.getpid()})" in err
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the other run's results are untouched
    for setting, message in (("flip_top=abc", "poisoncam.flip_top='abc' must be a whole number"),
                             ("probe.bogus=3", "unknown probe settings ['bogus']"),
                             ("flip_images=2.5", "poisoncam.flip_images=2.5 must be a whole number"),
                             ("flip_top=0", "flip_top must be >= 1")):
        err = _one_error(capsys, _detect(data, tmp_path / "d", "--set", setting, ckpt=ckpt))
        assert message in err
        assert not (tmp_path / "d").exists()  # refused before any work: no cache, no outputs


def test_detect_records_and_says_when_the_data_is_served_at_another_size_than_the_model_was_trained_at(tmp_path,
                                                                                                    capsys):
    data = _folder(tmp_path / "data")
    assert _pretrain(data, tmp_path / "tm", "--size", "16", "--no-backdoor-check") == 0
    capsys.readouterr()
    out = tmp_path / "d"
    assert main(["detect", "--ckpt", str(tmp_path / "tm" / "last.ckpt"), "--dataset", "folder", "--root", str(data),
                 "--size", "24", "--num-clusters", "2", "--remove", "none", "--set", "flip_top=4",
                 "--set", "flip_images=4", "--set", "null_windows=4", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "the data is served at 24x24 px and the threat model was trained at 16 px" in err
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["input"] == {"served_size": [24, 24], "model_side": 16, "resized": True}
