import gzip

import numpy as np
import pytest
import torchvision.transforms as T
from helpers import needs_fashion_mnist
from PIL import Image

from solo_poisoncam import PoisonCamError
from solo_poisoncam.data import DATASETS, build_dataset, dataset_from_spec, read_idx_gz


def test_registry_lists_the_datasets():
    assert set(DATASETS.names()) >= {"fashion-mnist", "cifar10", "cifar100", "stl10", "folder"}
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
    ds = build_dataset("folder", root=str(tmp_path))
    idx = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("9.png")][0]
    with pytest.raises(PoisonCamError, match="9.png"):
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
