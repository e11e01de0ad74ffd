"""The poisoned folder written the SSL-Backdoor generator's way (poison/folder.py), the box mapping to the
served side (data/base.py: served_box) and the in-memory --jpeg that stores every image compressed."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.data import build_dataset
from solo_poisoncam.data.base import served_box
from solo_poisoncam.poison import PatchAttack, PoisonedDataset, PoisonManifest, make_manifest
from solo_poisoncam.poison.folder import val_crop, write_poisoned_folder

HTBA = {"kind": "htba", "seed": 10}


def _source(root, sizes=((90, 70), (120, 160), (75, 75), (200, 110)), classes=("a", "b", "c"), per_class=4,
            val=2, seed=0):
    """An ImageFolder of smooth random images of differing sizes (PNG), with a val split."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[(i + len(c)) % len(sizes)]
                small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("w")
    src = _source(tmp / "src")
    m = write_poisoned_folder(str(src), str(tmp / "out"), HTBA, target=1, rate=0.5, seed=3, width=20, size=48)
    return src, tmp / "out", m


def _jpeg(arr, q=75):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_served_box_hand_computed():
    # 500x375 at 32: shorter side 375 -> 32, width round(500 * 32/375) = 43, crop left (43 - 32) // 2 = 5
    # x: 100 * 43/500 - 5 = 3.6, 140 * 43/500 - 5 = 7.04; y: 50 * 32/375 = 4.2667, 70 * 32/375 = 5.9733
    assert np.allclose(served_box((100, 50, 140, 70), (500, 375), 32), [3.6, 32 / 7.5, 7.04, 70 * 32 / 375])
    # portrait 100x200 at 50: height 100, top (100 - 50) // 2 = 25; a box across the crop edge is clipped
    assert np.allclose(served_box((10, 20, 30, 60), (100, 200), 50), [5, 0, 15, 5])
    assert served_box((1, 2, 3, 4), (9, 9), None).tolist() == [1, 2, 3, 4]


def test_placement_range_is_ssl_backdoors():
    """Top-left uniform in [floor(0.25 W), floor(0.75 W - w)]: 173 x 90 with w = 30 -> x in [43, 99], y in [22, 37]."""
    a = PatchAttack(trigger=HTBA, size=30.0)
    rng = np.random.default_rng(0)
    boxes = np.array([a.sample_box(173, 90, rng) for _ in range(4000)])
    assert boxes[:, 0].min() == 43 and boxes[:, 0].max() == 99 and boxes[:, 1].min() == 22 and boxes[:, 1].max() == 37
    assert (boxes[:, 2:] - boxes[:, :2] == 30).all()


def test_every_file_is_a_decodable_jpeg_and_the_layout_is_imagefolder(written):
    src, out, m = written
    for split in ("train", "val", "val_patched"):
        files = sorted((out / split).rglob("*.*"))
        assert len(files) == (12 if split == "train" else 6) and all(f.suffix == ".JPEG" for f in files)
        for f in files:
            with Image.open(f) as img:
                assert img.format == "JPEG" and img.convert("RGB").size[0] > 0
    ds = build_dataset("folder", root=str(out), size=48)
    assert ds.classes == ["a", "b", "c"] and len(ds) == 12 and m.num_samples == 12
    assert sorted((out / "train" / "b").iterdir())[0].name == "0.JPEG"


def test_rate_targeting_and_boxes_in_the_files_pixels(written):
    src, out, m = written
    ds = build_dataset("folder", root=str(out))
    assert m.num_poisons == 2 and (ds.targets[m.indexes] == 1).all()  # 0.5 of the 4 target images
    assert m.in_files and m.dataset["size"] == 48 and m.written["quality"] == 75 and m.written["trigger_width"] == 20
    for i, b, wh in zip(m.indexes, m.boxes, m.image_sizes):
        W, H = ds.image_size(int(i))
        assert tuple(wh) == (W, H) and b[2] - b[0] == 20 and b[3] - b[1] == 20
        assert int(0.25 * W) <= b[0] <= int(0.75 * W - 20) and int(0.25 * H) <= b[1] <= int(0.75 * H - 20)
    assert m.attack["size"] == 20 / 48 and m.attack["jpeg"] == 75  # what the backdoor check pastes at 48 px


def test_poisoned_files_differ_from_the_original_only_in_the_box(written):
    src, out, m = written
    ds = build_dataset("folder", root=str(out))
    trig = PatchAttack(trigger=HTBA, size=20.0)._resize(20, 20)
    for i, b in zip(m.indexes, m.boxes):
        rel = ds.samples[int(i)][0].split("/train/")[1]
        orig = np.asarray(Image.open(src / "train" / rel.replace(".JPEG", ".png")).convert("RGB")).astype(float)
        got = ds.get_array(int(i)).astype(float)
        x0, y0, x1, y1 = b
        # outside the box: the original up to JPEG error (the 8 px around the box, in its blocks, excluded)
        grown = np.zeros(got.shape[:2], bool)
        grown[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = True
        assert np.abs(got - orig)[~grown].mean() < 3 and np.abs(got - orig)[~grown].max() < 40
        # inside: the trigger, not the original
        assert np.abs(got[y0:y1, x0:x1] - trig).mean() < 25 < np.abs(orig[y0:y1, x0:x1] - trig).mean()


def test_clean_files_are_reencoded_jpegs_of_the_originals(written):
    src, out, m = written
    ds = build_dataset("folder", root=str(out))
    clean = [j for j in range(len(ds)) if j not in set(m.indexes.tolist())]
    for j in clean[:4]:
        rel = ds.samples[j][0].split("/train/")[1]
        orig = np.asarray(Image.open(src / "train" / rel.replace(".JPEG", ".png")).convert("RGB"))
        assert np.array_equal(ds.get_array(j), _jpeg(orig))  # the same encoder and quality: the same bytes decoded


def test_patched_val_is_resize_crop_then_the_trigger_in_10_to_90_percent(written):
    src, out, m = written
    rows = json.loads((out / "val_patched.json").read_text())
    assert rows["side"] == 48 and len(rows["images"]) == 6
    for r in rows["images"]:
        img = np.asarray(Image.open(out / "val_patched" / r["file"]).convert("RGB")).astype(float)
        assert img.shape == (48, 48, 3)
        x0, y0, x1, y1 = r["box"]
        assert 4 <= x0 <= 23 and 4 <= y0 <= 23 and x1 - x0 == 20  # [floor(0.1 S), floor(0.9 S) - w] at S = 48
        orig = np.asarray(val_crop(Image.open(src / "val" / r["file"].replace(".JPEG", ".png")).convert("RGB"), 48))
        grown = np.zeros((48, 48), bool)
        grown[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = True
        assert np.abs(img - orig)[~grown].mean() < 3 if (~grown).any() else True


def test_deterministic_under_the_seed(written, tmp_path):
    src, out, m = written
    again = write_poisoned_folder(str(src), str(tmp_path / "again"), HTBA, target=1, rate=0.5, seed=3, width=20,
                                  size=48)
    other = write_poisoned_folder(str(src), str(tmp_path / "other"), HTBA, target=1, rate=0.5, seed=4, width=20,
                                  size=48)
    assert np.array_equal(again.indexes, m.indexes) and np.array_equal(again.boxes, m.boxes)
    for f in sorted((out / "train").rglob("*.JPEG")):
        assert f.read_bytes() == (tmp_path / "again" / "train" / f.relative_to(out / "train")).read_bytes()
    assert not (np.array_equal(other.indexes, m.indexes) and np.array_equal(other.boxes, m.boxes))


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=100), r"smaller than the 100x100 px trigger"),
    (dict(quality=0), "jpeg quality must be in"),
    (dict(quality=100), "jpeg quality must be in"),
    (dict(rate=0), r"rate must be in \(0, 1\]"),
    (dict(rate=1.5), r"rate must be in \(0, 1\]"),
    (dict(target=3), "target class 3 does not exist"),
    (dict(extension=".png"), "extension must be one of"),
    (dict(width=20, size=None, val_size=16), "does not fit the 16 px patched validation"),
    (dict(src="missing"), "does not exist"),
])
def test_bad_input_one_error_nothing_written(tmp_path, kwargs, message):
    src = _source(tmp_path / "src", sizes=((90, 70), (60, 80)), per_class=2, val=1)
    args = dict(src=str(src), out=str(tmp_path / "out"), trigger=HTBA, target=1, rate=1.0, width=20)
    if kwargs.get("src") == "missing":
        kwargs = dict(kwargs, src=str(tmp_path / "missing"))
    with pytest.raises(PoisonCamError, match=message):
        write_poisoned_folder(**{**args, **kwargs})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no OUT, no temporary folder left


def test_an_existing_out_is_never_overwritten(written):
    src, out, _ = written
    with pytest.raises(PoisonCamError, match="already exists"):
        write_poisoned_folder(str(src), str(out), HTBA, target=1, rate=0.5)


def test_served_manifest_boxes_map_to_the_served_pixels_and_the_trigger_is_there(written):
    """The wrapper pastes nothing (the files hold the poisons) and its boxes sit on the served trigger."""
    from solo_poisoncam.eval.detection import true_boxes_in_input

    src, out, m = written
    data = PoisonedDataset.from_manifest(PoisonManifest.load(out))
    originals = build_dataset("folder", root=str(src), size=48)  # the same files in the same order, unpoisoned
    boxes = true_boxes_in_input(m, 48)
    for i in m.indexes:
        img = data.get_array(int(i)).astype(float)
        assert img.shape == (48, 48, 3) and np.array_equal(img, data.base.get_array(int(i)))
        assert np.allclose(boxes[int(i)], data.box(int(i)))
        x0, y0, x1, y1 = data.box(int(i))
        diff = np.abs(img - originals.get_array(int(i))).mean(-1)
        inner = diff[int(np.ceil(y0)) + 1:int(y1) - 1, int(np.ceil(x0)) + 1:int(x1) - 1]
        ring = np.ones_like(diff, bool)
        ring[max(0, int(y0) - 2):int(np.ceil(y1)) + 2, max(0, int(x0) - 2):int(np.ceil(x1)) + 2] = False
        assert inner.size and inner.mean() > 30 and diff[ring].mean() < 4  # the change is where the box says


def test_a_manifest_is_refused_at_another_size_and_reserved_for_it(written, tmp_path, capsys):
    from solo_poisoncam.cli import main

    src, out, m = written
    with pytest.raises(PoisonCamError, match="served at --size 48"):
        m.check_matches(build_dataset("folder", root=str(out), size=32))
    assert main(["poison", "--reserve", str(out / "manifest.json"), "--size", "32", "--out", str(tmp_path / "r")]) == 0
    r = PoisonManifest.load(tmp_path / "r")
    r.check_matches(build_dataset("folder", root=str(out), size=32))
    assert np.array_equal(r.boxes, m.boxes) and r.dataset["size"] == 32
    assert np.allclose(r.served_boxes(32)[0], [served_box(b, s, 32) for b, s in zip(m.boxes, m.image_sizes)])


def test_backdoor_check_images_and_detection_scoring_on_a_written_folder(written):
    from solo_poisoncam.detect.pipeline import DetectionResult
    from solo_poisoncam.eval.backdoor import check_images, validation_split
    from solo_poisoncam.eval.detection import score_detection

    src, out, m = written
    data = PoisonedDataset.from_manifest(PoisonManifest.load(out))
    val = validation_split(m.dataset)
    sets = check_images(data, val, 24, seed=0)
    assert len(sets["clean_train"]) == 10 and not np.isin(sets["clean_train"].indexes, m.indexes).any()
    assert len(sets["patched"]) == 4 and sets["patched"].take([0]).shape == (1, 3, 24, 24)  # val of classes a, c
    # windows at the served boxes halved (model side 24): localisation is exact; shifted by a box: a miss
    n, half = len(data), np.rint(np.array([data.box(int(i)) for i in m.indexes]) / 2).astype(np.int64)
    for shift, acc in ((0, 1.0), (10, 0.0)):
        windows = np.zeros((n, 4), np.int64)
        windows[m.indexes] = half + [shift, 0, shift, 0]
        scores = np.isin(np.arange(n), m.indexes).astype(float)
        r = DetectionResult(indexes=np.arange(n), scores=scores, windows=windows, clusters=np.zeros(n, np.int64),
                            removed=scores > 0, scored=np.ones(n, bool), probability=None, true_boxes=None, side=24)
        met = score_detection(r, m).metrics
        assert met["trigger_detection_accuracy"] == acc and met["precision"] == 1.0


def test_cli_write_folder_flags(tmp_path, capsys):
    from solo_poisoncam.cli import main

    src = _source(tmp_path / "src", per_class=2, val=1)
    assert main(["poison", "--write-folder", "--dataset", "folder", "--root", str(src), "--target", "0",
                 "--rate", "1", "--patch-size", "16", "--size", "40", "--jpeg", "90", "--extension", ".jpg",
                 "--out", str(tmp_path / "o")]) == 0
    m = PoisonManifest.load(tmp_path / "o")
    assert m.written["quality"] == 90 and m.dataset["size"] == 40 and m.num_poisons == 2
    assert all(f.suffix == ".jpg" for f in (tmp_path / "o" / "train").rglob("*.*"))
    assert "every file JPEG at quality 90" in capsys.readouterr().out
    for bad, msg in ((["--patch-size", "0.2"], "whole pixels"), (["--untargeted"], "--untargeted do"),
                     (["--dataset", "fashion-mnist"], "needs --dataset folder")):
        rc = main(["poison", "--write-folder", "--dataset", "folder", "--root", str(src), "--out",
                   str(tmp_path / "x")] + bad)
        assert rc == 2 and msg in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_in_memory_jpeg_compresses_every_image_and_off_changes_nothing():
    rng = np.random.default_rng(0)
    from solo_poisoncam.data.base import ArrayImageDataset

    images = np.repeat(np.kron(rng.integers(0, 256, (12, 4, 4, 3)), np.ones((1, 8, 8, 1))).astype(np.uint8), 1, 0)
    base = ArrayImageDataset(images, np.repeat([0, 1], 6), ["x", "y"], "t", "train", {"name": "t"})
    lossy, exact = PatchAttack(trigger=HTBA, size=8.0, jpeg=75), PatchAttack(trigger=HTBA, size=8.0)
    m = make_manifest(base, lossy, target=0, rate=0.5, seed=0)
    clean = [j for j in range(12) if j not in set(m.indexes.tolist())]
    stored, plain = PoisonedDataset(base, m, attack=lossy), PoisonedDataset(base, m, attack=exact)
    for j in clean:
        assert np.array_equal(stored.get_array(j), _jpeg(images[j]))  # clean images compressed too
        assert not np.array_equal(stored.get_array(j), images[j])
        assert np.array_equal(plain.get_array(j), images[j])  # --jpeg off: untouched
    t = stored.as_tensor().permute(0, 2, 3, 1).numpy()
    assert all(np.array_equal(t[j], stored.get_array(j)) for j in range(12))
    assert np.array_equal(plain.as_tensor().permute(0, 2, 3, 1).numpy()[clean], images[clean])


def test_detect_serves_a_written_folder_at_any_size(written):
    import argparse

    from solo_poisoncam.commands.detect import resolve_data

    src, out, m = written
    args = argparse.Namespace(manifest=str(out / "manifest.json"), dataset=None, split="train", root=None, size=32,
                              num_samples=None, download=False)
    data, r = resolve_data(args)
    assert r.dataset["size"] == 32 and m.dataset["size"] == 48 and np.array_equal(r.boxes, m.boxes)
    assert data.get_array(int(m.indexes[0])).shape[:2] == (32, 32)
    assert np.allclose([data.box(int(i)) for i in m.indexes], r.served_boxes(32)[0])
    args.size = None  # the manifest's own side
    assert resolve_data(args)[1].dataset["size"] == 48
