import gzip
from pathlib import Path

import numpy as np
import torch
import pytest
import torchvision.transforms as T
from helpers import needs_fashion_mnist, tiny_dataset
from PIL import Image

from solo_poisoncam import PoisonCamError
from solo_poisoncam.data import DATASETS, build_dataset, dataset_from_spec, read_idx_gz


def test_registry_lists_the_datasets():
    assert set(DATASETS.names()) >= {"fashion-mnist", "cifar10", "cifar100", "stl10", "npz", "folder"}
    with pytest.raises(PoisonCamError, match="unknown dataset 'mnist'.*fashion-mnist"):
        build_dataset("mnist")


@needs_fashion_mnist
def test_fashion_mnist_real_images_padded_to_32_rgb():
    ds = build_dataset("fashion-mnist", split="test")
    assert len(ds) == 10000
    assert np.bincount(ds.targets).tolist() == [1000] * 10
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    arr = np.asarray(img)
    # zero padding of 2 px around the 28x28 original, identical channels (grayscale served as RGB)
    assert arr[:2].max() == 0 and arr[:, :2].max() == 0 and arr[30:].max() == 0
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    raw = read_idx_gz(ds.spec["root"] + "/t10k-images-idx3-ubyte.gz")
    assert (arr[2:30, 2:30, 0] == raw[0]).all()
    assert ds.classes[label] == "Ankle boot"  # first Fashion-MNIST test image


@needs_fashion_mnist
def test_fashion_mnist_resize_subset_and_rebuild_from_spec():
    ds = build_dataset("fashion-mnist", split="test", size=48, resize="resize", num_samples=500, subset_seed=3)
    assert ds.images.shape == (500, 48, 48, 3)
    assert np.bincount(ds.targets).tolist() == [50] * 10
    again = dataset_from_spec(ds.spec)
    assert again.fingerprint() == ds.fingerprint()
    other = build_dataset("fashion-mnist", split="test", size=48, resize="resize", num_samples=500, subset_seed=4)
    assert other.fingerprint() != ds.fingerprint()


@needs_fashion_mnist
def test_works_with_torchvision_transforms():
    ds = build_dataset("fashion-mnist", split="test", num_samples=100)
    tf = T.Compose([T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.ToTensor()])
    x = tf(ds[3][0])
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1


def test_fashion_mnist_missing_files_error(tmp_path):
    with pytest.raises(PoisonCamError, match="apt-get install -y dataset-fashion-mnist"):
        build_dataset("fashion-mnist", root=str(tmp_path))


def test_idx_reader_on_handmade_file(tmp_path):
    data = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    p = tmp_path / "x-idx2-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(data)
    assert read_idx_gz(p).tolist() == [[0, 1, 2], [3, 4, 5]]
    with gzip.open(p, "wb") as f:
        f.write(data[:-1])
    with pytest.raises(PoisonCamError, match="truncated"):
        read_idx_gz(p)


def test_cifar_without_download_gives_clear_error(tmp_path):
    with pytest.raises(PoisonCamError, match="download=True"):
        build_dataset("cifar10", root=str(tmp_path))


def _make_folder(root, classes=("a", "b"), n=3, size=(20, 12)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_folder_dataset_reads_sizes_and_resizes(tmp_path):
    _make_folder(tmp_path / "train")
    ds = build_dataset("folder", root=str(tmp_path))
    assert len(ds) == 6 and ds.classes == ["a", "b"] and ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.image_size(0) == (20, 12) and ds[0][0].size == (20, 12)
    sized = build_dataset("folder", root=str(tmp_path), size=8)
    assert sized[0][0].size == (8, 8) and sized.image_size(4) == (8, 8)


def test_folder_corrupt_image_names_the_file(tmp_path):
    _make_folder(tmp_path)
    bad = tmp_path / "a" / "9.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(PoisonCamError, match=r"cannot read image file\(s\) 'a/9.png' \(not an image\)"):
        build_dataset("folder", root=str(tmp_path))  # found when listing, before any work
    # a JPEG cut short keeps a valid header: it is found when decoded, still naming the file
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a" / "8.jpg")
    bad.write_bytes((tmp_path / "a" / "8.jpg").read_bytes()[:3000])
    bad.rename(tmp_path / "a" / "9.jpg")
    ds = build_dataset("folder", root=str(tmp_path))
    idx = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("9.jpg")][0]
    with pytest.raises(PoisonCamError, match="cannot read image .*9.jpg"):
        ds[idx]


def test_folder_errors(tmp_path):
    with pytest.raises(PoisonCamError, match="does not exist"):
        build_dataset("folder", root=str(tmp_path / "nope"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(PoisonCamError, match="no images"):
        build_dataset("folder", root=str(tmp_path / "empty"))


def test_folder_stratified_subset(tmp_path):
    _make_folder(tmp_path, classes=("a", "b"), n=6)
    ds = build_dataset("folder", root=str(tmp_path), num_samples=4, subset_seed=1)
    assert len(ds) == 4 and ds.targets.tolist() == [0, 0, 1, 1]
    again = dataset_from_spec(ds.spec)
    assert [p for p, _ in again.samples] == [p for p, _ in ds.samples] and again.fingerprint() == ds.fingerprint()


def _write_npz(path, chw=False, gray=False, classes=True, n=40, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, 8, 8) if gray else ((n, 3, 8, 8) if chw else (n, 8, 8, 3))
    x_train = rng.integers(0, 256, size=shape, dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(10,) + shape[1:], dtype=np.uint8)
    arrays = dict(x_train=x_train, y_train=np.arange(n) % 4, x_test=x_test, y_test=np.arange(10) % 4)
    if classes:
        arrays["classes"] = np.array(["a", "b", "c", "d"])
    np.savez(path, **arrays)
    return arrays


def test_npz_dataset_reads_cifar_style_arrays(tmp_path):
    arrays = _write_npz(tmp_path / "d.npz")
    train = build_dataset("npz", root=str(tmp_path / "d.npz"))
    assert len(train) == 40 and train.classes == ["a", "b", "c", "d"] and train.targets.tolist()[:5] == [0, 1, 2, 3, 0]
    assert (train.get_array(7) == arrays["x_train"][7]).all()
    flat = arrays["x_train"].reshape(-1, 3) / 255.0
    assert np.allclose(train.mean, flat.mean(0), atol=1e-4) and np.allclose(train.std, flat.std(0), atol=1e-4)
    val = build_dataset("npz", split="val", root=str(tmp_path / "d.npz"))  # no x_val: the test arrays
    assert len(val) == 10 and (val.get_array(3) == arrays["x_test"][3]).all()
    assert val.mean == train.mean  # both splits normalised with the train statistics
    test = build_dataset("npz", split="test", root=str(tmp_path / "d.npz"))
    assert (test.images == val.images).all()
    assert dataset_from_spec(test.spec).fingerprint() == test.fingerprint() != train.fingerprint()


def test_npz_dataset_channel_first_grayscale_resize_and_subset(tmp_path):
    arrays = _write_npz(tmp_path / "chw.npz", chw=True, classes=False)
    ds = build_dataset("npz", root=str(tmp_path / "chw.npz"))
    assert (ds.get_array(0) == arrays["x_train"][0].transpose(1, 2, 0)).all()
    assert ds.classes == ["0", "1", "2", "3"]
    _write_npz(tmp_path / "g.npz", gray=True)
    g = build_dataset("npz", root=str(tmp_path / "g.npz"), size=16, num_samples=20)
    assert g.images.shape == (20, 16, 16, 3) and np.bincount(g.targets).tolist() == [5] * 4
    assert (g.images[..., 0] == g.images[..., 2]).all()


def test_npz_dataset_bad_input_errors(tmp_path):
    with pytest.raises(PoisonCamError, match="needs root="):
        build_dataset("npz")
    with pytest.raises(PoisonCamError, match="does not exist or is not a file"):
        build_dataset("npz", root=str(tmp_path))
    np.savez(tmp_path / "nokey.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(PoisonCamError, match=r"lacks \['x_train', 'y_train'"):
        build_dataset("npz", root=str(tmp_path / "nokey.npz"))
    np.savez(tmp_path / "f.npz", x_train=np.zeros((2, 4, 4, 3), np.float32), y_train=np.zeros(2))
    with pytest.raises(PoisonCamError, match="'x_train' must be uint8, got float32"):
        build_dataset("npz", root=str(tmp_path / "f.npz"))
    np.savez(tmp_path / "n.npz", x_train=np.zeros((3, 4, 4, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(PoisonCamError, match="3 images but 2 labels"):
        build_dataset("npz", root=str(tmp_path / "n.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PoisonCamError, match="cannot read npz file"):
        build_dataset("npz", root=str(tmp_path / "bad.npz"))


def _png_tree(root, classes=("a", "b"), per_class=2):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_held_out_split_never_falls_back_to_training_images(tmp_path):
    _png_tree(tmp_path / "data" / "train", per_class=3)
    with pytest.raises(PoisonCamError, match="no held-out split for image folder"):
        build_dataset("folder", split="test", root=str(tmp_path / "data" / "train"))
    _png_tree(tmp_path / "data" / "val", per_class=1)
    assert len(build_dataset("folder", split="test", root=str(tmp_path / "data" / "train"))) == 2  # sibling val
    assert len(build_dataset("folder", split="test", root=str(tmp_path / "data"))) == 2  # root/val
    assert len(build_dataset("folder", split="test", root=str(tmp_path / "data" / "val"))) == 2  # given directly
    assert len(build_dataset("folder", root=str(tmp_path / "data"))) == 6  # root/train


def test_folder_file_list_selects_and_orders_a_subset(tmp_path):
    _png_tree(tmp_path / "t", per_class=3)
    ds = build_dataset("folder", root=str(tmp_path / "t"), files=["b/2.png", "a/0.png"])
    assert [str(Path(p).relative_to(tmp_path / "t")) for p, _ in ds.samples] == ["b/2.png", "a/0.png"]
    assert ds.targets.tolist() == [1, 0] and ds.classes == ["a", "b"]
    assert dataset_from_spec(ds.spec).fingerprint() == ds.fingerprint()
    with pytest.raises(PoisonCamError, match="lacks 1 listed file"):
        build_dataset("folder", root=str(tmp_path / "t"), files=["a/9.png"])


def test_folder_with_an_empty_class_folder_is_refused(tmp_path):
    _png_tree(tmp_path / "t", per_class=2)
    (tmp_path / "t" / "c").mkdir()
    with pytest.raises(PoisonCamError, match=r"class folder\(s\) \['c'\] hold no images"):
        build_dataset("folder", root=str(tmp_path / "t"))


def test_backdoor_report_names_the_held_out_folder_it_used(tmp_path):
    """backdoor.json's val_split is the folder the patched images came from (here 'val'), not 'test'."""
    from helpers import SaturationNet

    from solo_poisoncam.eval.backdoor import backdoor_strength, validation_split
    from solo_poisoncam.poison import PatchAttack, PoisonedDataset, make_manifest

    _png_tree(tmp_path / "d" / "train", classes=("a", "b", "c"), per_class=6)
    _png_tree(tmp_path / "d" / "val", classes=("a", "b", "c"), per_class=2)
    base = build_dataset("folder", root=str(tmp_path / "d"))
    manifest = make_manifest(base, PatchAttack(size=8), target=0, rate=0.5, seed=0)
    val = validation_split(manifest.dataset)
    report = backdoor_strength(SaturationNet(8), PoisonedDataset(base, manifest), val, num_clusters=3,
                               reference=SaturationNet(8))
    assert report["settings"]["val_split"] == "val" and report["settings"]["num_patched"] == 4


def test_indexed_subset_equals_a_fresh_set_of_those_indexes_without_materialising_again(monkeypatch):
    """``IndexedImages.subset``: the same indexes, targets and images as building the set anew from those
    dataset indexes; an in-memory poisoned set is sliced, not pasted again."""
    from solo_poisoncam.data.indexed import IndexedImages
    from solo_poisoncam.poison import PatchAttack, PoisonedDataset, make_manifest

    base = tiny_dataset(n_per_class=10, num_classes=4)
    manifest = make_manifest(base, PatchAttack(size=4), target=1, rate=1.0, seed=0)
    data = PoisonedDataset(base, manifest)
    parent = IndexedImages(data, indexes=np.arange(5, 40))
    positions = [3, 0, 17, 30]
    fresh = IndexedImages(data, indexes=parent.indexes[positions])
    calls = []
    monkeypatch.setattr(PoisonedDataset, "as_tensor", lambda self: calls.append(1))
    sub = parent.subset(positions)
    assert calls == []
    assert sub.indexes.tolist() == [8, 5, 22, 35] and sub.targets.tolist() == fresh.targets.tolist()
    assert torch.equal(sub.as_tensor(), fresh.as_tensor()) and sub[2][0] == 22
