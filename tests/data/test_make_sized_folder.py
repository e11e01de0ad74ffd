"""scripts/make_sized_folder.py: an ImageFolder of differing sizes and aspects, lossless, seeded."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from solo_poisoncam.checks import PoisonCamError
from solo_poisoncam.data import build_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_sized_folder.py"
spec = importlib.util.spec_from_file_location("make_sized_folder", SCRIPT)
msf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(msf)


def _npz(path):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), y_test=np.arange(6) % 3)
    return str(path)


def test_draw_sizes_ranges():
    s = msf.draw_sizes(4000, 64, 160, seed=1)
    side, aspect = np.sqrt(s[:, 0] * s[:, 1]), s[:, 0] / s[:, 1]
    assert 63 <= side.min() < 66 and 158 < side.max() <= 161 and 0.74 < aspect.min() < 0.76 and 1.32 < aspect.max() < 1.34
    assert np.array_equal(s, msf.draw_sizes(4000, 64, 160, seed=1)) and len(np.unique(s, axis=0)) > 1000


def test_writes_a_sized_png_folder_the_folder_dataset_reads(tmp_path):
    npz = _npz(tmp_path / "d.npz")
    assert msf.main(["--npz", npz, "--out", str(tmp_path / "o"), "--min-side", "20", "--max-side", "40"]) == 0
    train = build_dataset("folder", root=str(tmp_path / "o"))
    val = build_dataset("folder", split="val", root=str(tmp_path / "o"))
    assert train.classes == ["0_0", "1_1", "2_2"] and len(train) == 30 and len(val) == 6
    assert np.array_equal(train.targets, np.sort(np.arange(30) % 3))  # label order kept
    sizes = {train.image_size(i) for i in range(30)}
    assert len(sizes) > 10 and all(14 <= min(wh) and max(wh) <= 47 for wh in sizes)
    files = json.loads((tmp_path / "o" / "sizes.json").read_text())["files"]["train"]
    first = files[0]
    img = Image.open(tmp_path / "o" / "train" / first["file"])
    assert img.format == "PNG" and list(img.size) == first["size"]
    src = np.load(npz)["x_train"][int(Path(first["file"]).stem)]
    assert np.array_equal(np.asarray(img), np.asarray(Image.fromarray(src).resize(img.size, Image.BICUBIC)))


def test_refuses_an_existing_out_and_bad_sides(tmp_path):
    npz = _npz(tmp_path / "d.npz")
    (tmp_path / "o").mkdir()
    with pytest.raises(PoisonCamError, match="already exists"):
        msf.make_sized_folder(str(tmp_path / "o"), {"name": "npz", "root": npz})
    with pytest.raises(PoisonCamError, match="min-side"):
        msf.make_sized_folder(str(tmp_path / "p"), {"name": "npz", "root": npz}, min_side=50, max_side=40)
    assert not (tmp_path / "p").exists()
