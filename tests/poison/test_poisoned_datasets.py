import numpy as np
import pytest
import torch
import torchvision.transforms as T
from helpers import needs_fashion_mnist, tiny_dataset

from solo_poisoncam import PoisonCamError
from solo_poisoncam.data import build_dataset
from solo_poisoncam.poison import (BlendAttack, PatchAttack, PatchedDataset, PoisonedDataset, PoisonManifest,
                                   make_manifest, select_poison_indexes)


def test_selection_counts_follow_rate_of_target_and_all():
    targets = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx = select_poison_indexes(targets, target=2, rate=0.5, seed=0)
    assert len(idx) == 15 and (targets[idx] == 2).all() and (np.diff(idx) > 0).all()
    idx = select_poison_indexes(targets, target=2, rate=0.1, rate_of="all", seed=0)
    assert len(idx) == 10 and (targets[idx] == 2).all()
    idx = select_poison_indexes(targets, target=2, rate=0.1, rate_of="all", targeted=False, seed=0)
    assert len(idx) == 10 and len(np.unique(targets[idx])) > 1
    with pytest.raises(PoisonCamError, match="only 30 images"):
        select_poison_indexes(targets, target=2, rate=0.5, rate_of="all")
    with pytest.raises(PoisonCamError, match="poisons no image"):
        select_poison_indexes(targets, target=0, rate=0.01)
    with pytest.raises(PoisonCamError, match="rate_of must be"):
        select_poison_indexes(targets, target=0, rate=0.5, rate_of="class")


def test_same_seed_same_poisons_other_seed_other_poisons():
    ds = tiny_dataset(n_per_class=20)
    a = PatchAttack(size=4)
    m1, m2, m3 = (make_manifest(ds, a, 1, 0.5, seed=s) for s in (7, 7, 8))
    assert (m1.indexes == m2.indexes).all() and (m1.boxes == m2.boxes).all()
    assert not (m1.indexes == m3.indexes).all()
    # placement has its own stream: a different trigger size poisons the same images
    m4 = make_manifest(ds, PatchAttack(size=6), 1, 0.5, seed=7)
    assert (m4.indexes == m1.indexes).all()


@pytest.mark.parametrize("rate", [0.5, 1.0, 0.25])
@needs_fashion_mnist
def test_real_fashion_mnist_counts_and_boxes_match_changed_pixels(rate):
    ds = build_dataset("fashion-mnist", num_samples=2000)
    attack = PatchAttack(size=8)
    m = make_manifest(ds, attack, target=3, rate=rate, seed=0)
    class_size = int((ds.targets == 3).sum())
    assert m.num_poisons == round(rate * class_size)
    poisoned = PoisonedDataset(ds, m)
    x = poisoned.as_tensor().permute(0, 2, 3, 1).numpy()
    changed = (x != ds.images).any(-1)  # (N, H, W)
    assert set(np.flatnonzero(changed.any((1, 2)))) <= set(m.indexes.tolist())
    for i, (x0, y0, x1, y1) in zip(m.indexes, m.boxes):
        ys, xs = np.nonzero(changed[i])
        # every changed pixel is inside the recorded box, and the box lies in the central region
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        assert 8 <= x0 and x1 <= 24 and 8 <= y0 and y1 <= 24
        assert (x[i, y0:y1, x0:x1] == poisoned.get_array(int(i))[y0:y1, x0:x1]).all()


def test_wrapper_items_match_base_and_work_with_augmentations():
    ds = tiny_dataset(n_per_class=8, size=24)
    m = make_manifest(ds, PatchAttack(size=6), 0, 1.0, seed=0)
    tf = T.Compose([T.RandomResizedCrop(24, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    wrapped = PoisonedDataset(ds, m, transform=tf, return_index=True)
    loader = torch.utils.data.DataLoader(wrapped, batch_size=6, shuffle=False)
    idx, x, y = next(iter(loader))
    assert idx.tolist() == list(range(6)) and x.shape == (6, 3, 24, 24) and y.tolist() == [0] * 6
    plain = PoisonedDataset(ds, m)
    img, label = plain[10]
    assert label == ds.targets[10] and (np.asarray(img) == ds.images[10]).all()  # class 1: clean
    assert plain.is_poison.sum() == 8 and plain.is_poison[:8].all()


def test_manifest_json_roundtrip_and_other_data_rejected(tmp_path):
    ds = tiny_dataset(n_per_class=10)
    m = make_manifest(ds, BlendAttack(), 2, 0.3, seed=1)
    m.save(tmp_path / "manifest.json")
    back = PoisonManifest.load(tmp_path)
    assert back.to_dict() == m.to_dict()
    assert (back.boxes == [[0, 0, 16, 16]] * 3).all()
    other = tiny_dataset(n_per_class=10, seed=5)
    with pytest.raises(PoisonCamError, match="made for other data"):
        PoisonedDataset(other, back)
    with pytest.raises(PoisonCamError, match="dataset of 30 images, this one has 12"):
        PoisonedDataset(tiny_dataset(n_per_class=4), back)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PoisonCamError, match="not valid JSON"):
        PoisonManifest.load(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text('{"version": 1}')
    with pytest.raises(PoisonCamError, match="malformed manifest"):
        PoisonManifest.load(tmp_path / "partial.json")


def test_target_must_exist():
    with pytest.raises(PoisonCamError, match="target class 5 does not exist"):
        make_manifest(tiny_dataset(), PatchAttack(size=3), 5, 0.5)


def test_patched_eval_set_excludes_target_and_uses_wide_region():
    ds = tiny_dataset(n_per_class=200, size=40)
    attack = PatchAttack(size=8)
    patched = PatchedDataset(ds, attack, target=1, seed=0)
    assert len(patched) == 400 and (patched.targets != 1).all()
    b = patched.boxes
    assert b[:, 0].min() >= 4 and b[:, 2].max() <= 36  # 10%-90% of 40 px
    assert b[:, 0].min() <= 5 and b[:, 0].max() >= 27
    x = patched.as_tensor().permute(0, 2, 3, 1).numpy()
    base = ds.images[patched.indexes]
    changed = (x != base).any(-1)
    for j in range(0, 400, 37):
        x0, y0, x1, y1 = b[j]
        ys, xs = np.nonzero(changed[j])
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
    control = PatchedDataset(ds, attack, target=1, seed=0, control=True)
    c = control.get_array(0)
    x0, y0, x1, y1 = control.boxes[0]
    assert len(np.unique(c[y0:y1, x0:x1].reshape(-1, 3), axis=0)) == 1  # one solid colour
    assert (control.boxes == patched.boxes).all()
