import os

import numpy as np
import pytest

pytest.importorskip("solo.methods", reason="solo-learn is not importable: see docs/solo-learn.md")

import solo.args.pretrain as solo_args  # noqa: E402
import solo.data.pretrain_dataloader as solo_data  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from helpers import sized_image_folder  # noqa: E402
from PIL import Image  # noqa: E402
from solo_testing import image_folder, raw_cfg, solo_transform  # noqa: E402

from solo_poisoncam.checks import PoisonCamError  # noqa: E402
from solo_poisoncam.data import dataset_from_spec  # noqa: E402
from solo_poisoncam.poison import PoisonedDataset  # noqa: E402
from solo_poisoncam.solo_adapter import register  # noqa: E402
from solo_poisoncam.solo_adapter.dataset import PoisonedSoloDataset, SoloImageView  # noqa: E402

NUM_CLASSES, PER_CLASS = 4, 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("data") / "train", NUM_CLASSES, PER_CLASS)


def solo_train_set(folder, fraction=-1.0, no_labels=False, **poison):
    """parse_cfg then prepare_datasets, both as main_pretrain.py calls them (after register())."""
    register()
    cfg = raw_cfg(dataset="custom", train_path=folder, poison=poison or {"enabled": False})
    cfg.data.fraction, cfg.data.no_labels = fraction, no_labels
    cfg = solo_args.parse_cfg(cfg)
    ds = solo_data.prepare_datasets("custom", solo_transform(), train_data_path=str(folder), data_format="image_folder",
                                    no_labels=no_labels, data_fraction=fraction)
    return ds, cfg


def test_wrapper_poisons_the_raw_image_before_solo_augmentation(folder):
    ds, cfg = solo_train_set(folder, rate=0.5, target=2, attack={"name": "patch", "size": 8})
    assert isinstance(ds, PoisonedSoloDataset) and len(ds) == NUM_CLASSES * PER_CLASS
    m = ds.manifest
    assert m.num_poisons == round(0.5 * PER_CLASS) == cfg.poison.num_poisons
    assert set(ds.view.targets[m.indexes]) == {2}
    assert ds.samples is ds.base.samples and ds.classes == [f"class{c}" for c in range(NUM_CLASSES)]  # forwarded

    # solo's item format, with solo's transform still applied: two normalised 32x32 crops
    index, crops, target = ds[int(m.indexes[0])]
    assert index == int(m.indexes[0]) and target == 2
    assert isinstance(crops, list) and len(crops) == 2 and crops[0].shape == (3, 32, 32)
    assert crops[0].dtype == torch.float32 and crops[0].min() < 0  # Normalize ran
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].tolist() == [0, 1, 2, 3, 4] and len(batch[1]) == 2 and batch[1][0].shape == (5, 3, 32, 32)

    # pixels change inside the manifest's boxes only, and only for the poisoned indexes
    clean, poisoned = ds.view, ds.eval_view()
    for i in range(len(ds)):
        a, b = clean.get_array(i), poisoned.get_array(i)
        if i in set(m.indexes.tolist()):
            x0, y0, x1, y1 = m.box_map()[i]
            inside = np.zeros(a.shape[:2], dtype=bool)
            inside[y0:y1, x0:x1] = True
            assert (x1 - x0, y1 - y0) == (8, 8)
            assert np.array_equal(a[~inside], b[~inside]) and not np.array_equal(a[inside], b[inside])
        else:
            assert np.array_equal(a, b)
    # __getitem__ serves exactly these poisoned pixels to the augmentation
    seen = []
    ds.transform = lambda img: seen.append(np.asarray(img)) or 0
    ds[int(m.indexes[0])]
    assert np.array_equal(seen[0], poisoned.get_array(int(m.indexes[0])))


def test_manifest_is_rebuildable_by_our_dataset_registry(folder):
    ds, _ = solo_train_set(folder, rate=0.5)
    spec = ds.manifest.dataset
    assert spec == {"name": "folder", "split": "train", "root": str(folder), "size": None}
    ours = dataset_from_spec(spec)
    ds.manifest.check_matches(ours)  # same images, order and fingerprint as `poisoncam detect --manifest` sees
    assert np.array_equal(ours.targets, ds.view.targets)
    assert isinstance(ds.eval_view(), PoisonedDataset)


def test_poisons_are_drawn_after_solo_fraction_subsetting(folder):
    ds, cfg = solo_train_set(folder, fraction=0.5, rate=1.0, target=1)
    assert len(ds) == NUM_CLASSES * PER_CLASS // 2 == ds.manifest.num_samples
    assert ds.manifest.num_poisons == PER_CLASS // 2  # the whole subset's class 1
    labels = np.array([y for _, y in ds.samples])  # .samples (not .targets) is what solo subsets
    assert (labels[ds.manifest.indexes] == 1).all() and (labels == 1).sum() == PER_CLASS // 2
    spec = ds.manifest.dataset  # the subset, file by file: `poisoncam detect --manifest` rebuilds it
    assert spec["name"] == "folder" and len(spec["files"]) == len(ds)
    ours = dataset_from_spec(spec)
    ds.manifest.check_matches(ours)
    assert [p for p, _ in ours.samples] == [p for p, _ in ds.samples]
    assert np.array_equal(PoisonedDataset(ours, ds.manifest).get_array(int(ds.manifest.indexes[0])),
                          ds.eval_view().get_array(int(ds.manifest.indexes[0])))


def test_replaying_a_manifest_gives_the_same_poisons(folder, tmp_path):
    ds, _ = solo_train_set(folder, rate=0.5, seed=3)
    path = ds.manifest.save(tmp_path / "manifest.json")
    again, _ = solo_train_set(folder, rate=0.9, seed=99, manifest=str(path))  # rate and seed ignored: replayed
    assert np.array_equal(again.manifest.indexes, ds.manifest.indexes)
    assert np.array_equal(again.manifest.boxes, ds.manifest.boxes)
    other = image_folder(tmp_path / "other", NUM_CLASSES, PER_CLASS, seed=1)
    # folder fingerprints are file stats (name, size, mtime), not content; these noise PNGs have
    # the sizes and names of the first set, so make their mtimes differ as files written at
    # another time do (written within the same second they would be taken for the same data)
    for f in other.rglob("*.png"):
        st = f.stat()
        os.utime(f, (st.st_atime, st.st_mtime + 10))
    with pytest.raises(PoisonCamError, match="manifest was made for other data"):
        solo_train_set(other, rate=0.5, manifest=str(path))


def test_unlabelled_folder_takes_untargeted_poisoning(tmp_path):
    flat = image_folder(tmp_path / "flat", num_classes=3, per_class=4, labelled=False)
    ds, _ = solo_train_set(flat, no_labels=True, rate=0.25, targeted=False, rate_of="all")
    assert type(ds.base).__mro__[1].__name__ == "CustomDatasetWithoutLabels"
    assert ds.manifest.num_poisons == 3 and (ds.view.targets == -1).all()
    index, crops, target = ds[int(ds.manifest.indexes[0])]
    assert target == -1 and len(crops) == 2


def test_without_poisoning_prepare_datasets_is_solo_own(folder):
    ds, _ = solo_train_set(folder)
    assert not isinstance(ds, PoisonedSoloDataset) and ds.transform is not None


def test_view_reads_raw_images_whatever_the_transform(folder, monkeypatch):
    from solo_poisoncam.solo_adapter.registration import STATE

    register()
    monkeypatch.setattr(STATE, "cfg", None)  # no parsed run config: solo's prepare_datasets, unwrapped
    ds = solo_data.prepare_datasets("custom", solo_transform(), train_data_path=str(folder))
    cfg = OmegaConf.create({"data": {"dataset": "custom", "train_path": str(folder), "format": "image_folder",
                                     "no_labels": False, "fraction": -1}})
    from solo_poisoncam.solo_adapter.dataset import view_from_cfg

    view = view_from_cfg(ds, cfg)
    assert isinstance(view, SoloImageView) and ds.transform is not None  # the training set is untouched
    assert view.image_size(0) == (32, 32) and view.get_array(0).shape == (32, 32, 3)
    assert view[0][1] == 0 and view.num_classes == NUM_CLASSES


def test_resume_with_other_poisons_is_refused(folder, tmp_path):
    from types import SimpleNamespace

    from solo_poisoncam.solo_adapter.callbacks import ManifestCallback

    ds, _ = solo_train_set(folder, rate=0.5, seed=1)
    other, _ = solo_train_set(folder, rate=0.5, seed=2)

    def trainer(dataset, ckpt_path):
        return SimpleNamespace(train_dataloader=SimpleNamespace(dataset=dataset), ckpt_path=ckpt_path,
                               is_global_zero=False, callbacks=[])

    saved = ManifestCallback()
    saved.on_train_start(trainer(ds, None), None)
    state = saved.state_dict()
    assert state["poisoned"] and state["num_poisons"] == 3
    assert all(isinstance(v, (bool, int, str)) for v in state.values())  # weights_only-loadable

    same = ManifestCallback()
    same.load_state_dict(state)
    same.on_train_start(trainer(ds, "last.ckpt"), None)  # same poisons: fine
    for dataset in (other, ds.base):  # other poisons, or none at all
        cb = ManifestCallback()
        cb.load_state_dict(state)
        with pytest.raises(PoisonCamError, match="refusing to resume from 'last.ckpt'"):
            cb.on_train_start(trainer(dataset, "last.ckpt"), None)
    unknown = ManifestCallback()  # a checkpoint made without solo-poisoncam: no record, a warning
    with pytest.warns(UserWarning, match="holds no poison record"):
        unknown.on_train_start(trainer(ds, "last.ckpt"), None)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A folder of mixed image sizes, poisoned the generator's way (`poisoncam poison --write-folder`)."""
    from solo_poisoncam.poison.folder import write_poisoned_folder

    tmp = tmp_path_factory.mktemp("written")
    src = sized_image_folder(tmp / "src", per_class=(6, 8, 10), val=2)
    m = write_poisoned_folder(str(src), str(tmp / "out"), {"kind": "htba", "seed": 10}, target=1, rate=0.5, seed=3,
                              width=20, size=48)
    return src, tmp / "out", m


def test_a_written_folders_manifest_gives_the_ground_truth_and_pastes_nothing(written):
    """poison.manifest=OUT/manifest.json with data.train_path=OUT/train: solo trains on the files as written
    (nothing pasted again), and the manifest is served as solo reads them: file pixels, data.train_path."""
    src, out, m = written
    ds, cfg = solo_train_set(out / "train", manifest=str(out / "manifest.json"), target=0, rate=0.9)
    r = ds.manifest
    assert isinstance(ds, PoisonedSoloDataset) and r.in_files and r.num_poisons == 4 == cfg.poison.num_poisons
    # poison.* record the manifest's poisons, not the defaults or what was given beside it
    assert (cfg.poison.target, cfg.poison.rate, cfg.poison.seed) == (1, 0.5, 3) and cfg.poison.attack.jpeg == 75
    assert np.array_equal(r.indexes, m.indexes) and np.array_equal(r.boxes, m.boxes)  # file pixels, unmapped
    assert r.dataset == {"name": "folder", "split": "train", "root": str((out / "train").resolve()), "size": None}
    assert r.fingerprint == ds.view.fingerprint() != m.fingerprint  # re-served: the files as stored
    i = int(r.indexes[0])
    path = ds.base.samples[i][0]
    with Image.open(path) as img:
        on_disk = np.asarray(img.convert("RGB"))
    assert on_disk.shape[:2] == tuple(r.image_sizes[0][::-1])  # the trigger box is in this file's pixels
    assert np.array_equal(ds.eval_view().get_array(i), on_disk)  # the detector sees the file, no second paste
    raw = ds.transform
    ds.transform = None
    assert np.array_equal(np.asarray(ds[i][1]), on_disk)  # solo's augmentation gets the file as written
    ds.transform = raw
    served, _ = r.served_boxes(r.dataset["size"])
    assert np.array_equal(served, r.boxes)


def test_a_written_folders_manifest_is_refused_for_other_training_data(written, tmp_path):
    src, out, m = written
    manifest = str(out / "manifest.json")
    with pytest.raises(PoisonCamError, match="does not match data.train_path: it describes the 24 training files .* "
                                             "gives solo-learn 36 images; train on the written folder's train/"):
        solo_train_set(out, manifest=manifest)  # OUT itself: 24 + 6 + 6 files, train/, val/ and val_patched/ taken as classes
    with pytest.raises(PoisonCamError, match="gives solo-learn 24 images whose names, classes, sizes or modification "
                                             "times differ"):
        solo_train_set(src / "train", manifest=manifest)  # the source: the same images, not the written files
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(out / "train", copy)  # a copy that keeps names, sizes and times is the same training set
    moved, _ = solo_train_set(copy, manifest=manifest)
    assert moved.manifest.dataset["root"] == str(copy.resolve()) and np.array_equal(moved.manifest.indexes, m.indexes)
    for f in copy.rglob("*.JPEG"):  # files changed since they were written
        st = f.stat()
        os.utime(f, (st.st_atime, st.st_mtime + 10))
    with pytest.raises(PoisonCamError, match="another folder, or files changed since they were written"):
        solo_train_set(copy, manifest=manifest)
    with pytest.raises(PoisonCamError, match="covers every training file, and data.fraction=0.5 trains on a subset"):
        solo_train_set(out / "train", fraction=0.5, manifest=manifest)
    with pytest.raises(PoisonCamError, match="must read that folder as a labelled ImageFolder"):
        solo_train_set(out / "train", no_labels=True, manifest=manifest, targeted=False, rate_of="all")
