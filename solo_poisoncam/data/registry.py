"""Datasets by name. ``build_dataset(name, split=..., **kwargs)`` rebuilds exactly from a stored spec."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.data.base import ArrayImageDataset, FolderImageDataset, ImageDataset
from solo_poisoncam.registry import Registry

DATASETS: Registry = Registry("dataset")

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def build_dataset(name: str, split: str = "train", **kwargs: Any) -> ImageDataset:
    """Build a registered dataset; the returned object's ``spec`` rebuilds it."""
    check(split in ("train", "test", "val"), f"split must be 'train' or 'test', got '{split}'")
    return DATASETS.get(name)(split=split, **kwargs)


def dataset_from_spec(spec: Dict[str, Any]) -> ImageDataset:
    spec = dict(spec)
    return build_dataset(spec.pop("name"), **spec)


def _subsample(images: np.ndarray, targets: np.ndarray, num_samples: Optional[int], seed: int):
    """A class-stratified subset of ``num_samples`` images (order kept), or everything."""
    if num_samples is None or num_samples >= len(targets):
        return images, targets
    check(num_samples > 0, f"num_samples must be positive, got {num_samples}")
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    keep = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(targets == c)
        share = round(num_samples * len(idx) / len(targets))
        keep.append(rng.choice(idx, size=min(len(idx), share), replace=False))
    keep = np.sort(np.concatenate(keep))
    return images[keep], targets[keep]


def _fit_size(images: np.ndarray, size: Optional[int], mode: str) -> np.ndarray:
    """Square uint8 images (N, H, W, 3) to ``size`` by zero-padding (centred) or bilinear resizing."""
    n, h, w, _ = images.shape
    if size is None or (h == size and w == size):
        return images
    check(size > 0, f"size must be positive, got {size}")
    if mode == "pad":
        check(size >= max(h, w), f"cannot pad {h}x{w} images to {size}; use resize='resize'")
        top, left = (size - h) // 2, (size - w) // 2
        out = np.zeros((n, size, size, 3), dtype=np.uint8)
        out[:, top:top + h, left:left + w] = images
        return out
    check(mode == "resize", f"resize must be 'pad' or 'resize', got '{mode}'")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for s in range(0, n, 4096):
        x = torch.from_numpy(images[s:s + 4096]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[s:s + 4096] = y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def read_idx_gz(path: Path) -> np.ndarray:
    """Read an IDX (MNIST format) file, gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PoisonCamError(f"cannot read '{path}': {e}") from e
    check(len(data) >= 4 and data[0] == 0 and data[1] == 0 and data[2] == 8,
          f"'{path}' is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    check(arr.size == int(np.prod(dims)), f"'{path}' is truncated")
    return arr.reshape(dims)


@DATASETS.register("fashion-mnist")
def fashion_mnist(split: str = "train", root: Optional[str] = None, size: Optional[int] = 32,
                  resize: str = "pad", num_samples: Optional[int] = None, subset_seed: int = 0) -> ArrayImageDataset:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (offline), served as 3-channel images.

    ``size=32, resize='pad'`` zero-pads the 28x28 images so CIFAR-sized backbones run unchanged.
    """
    root = root or os.environ.get("POISONCAM_FASHION_MNIST", FASHION_MNIST_ROOT)
    prefix = "train" if split == "train" else "t10k"
    img_path = _find(Path(root), f"{prefix}-images-idx3-ubyte")
    lbl_path = _find(Path(root), f"{prefix}-labels-idx1-ubyte")
    images = read_idx_gz(img_path)
    targets = read_idx_gz(lbl_path).astype(np.int64)
    images, targets = _subsample(images, targets, num_samples, subset_seed)
    images = np.repeat(images[..., None], 3, axis=-1)
    images = _fit_size(images, size, resize)
    spec = dict(name="fashion-mnist", split=split, root=root, size=size, resize=resize,
                num_samples=num_samples, subset_seed=subset_seed)
    return ArrayImageDataset(images, targets, FASHION_MNIST_CLASSES, "fashion-mnist", split, spec,
                             mean=(0.2860,) * 3, std=(0.3530,) * 3)


def _find(root: Path, stem: str) -> Path:
    for suffix in (".gz", ""):
        p = root / f"{stem}{suffix}"
        if p.exists():
            return p
    raise PoisonCamError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in '{root}'. Install it with "
        "'apt-get install -y dataset-fashion-mnist' or set POISONCAM_FASHION_MNIST to its folder."
    )


def _torchvision_arrays(cls_name: str, root: str, split: str, download: bool):
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        if cls_name == "STL10":
            ds = cls(root, split=split, download=download)
            return np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1)), np.asarray(ds.labels), list(ds.classes)
        ds = cls(root, train=(split == "train"), download=download)
    except RuntimeError as e:
        raise PoisonCamError(
            f"{cls_name} not found under '{root}' ({e}). Pass download=True (--download) to fetch it, "
            "or point root at an existing copy."
        ) from e
    return np.asarray(ds.data), np.asarray(ds.targets), list(ds.classes)


def _register_torchvision(name: str, cls_name: str, mean, std):
    @DATASETS.register(name)
    def builder(split: str = "train", root: str = "./datasets", download: bool = False,
                size: Optional[int] = None, resize: str = "resize", num_samples: Optional[int] = None,
                subset_seed: int = 0) -> ArrayImageDataset:
        tv_split = split
        if cls_name == "STL10":
            check(split in ("train", "test", "unlabeled", "train+unlabeled"), f"unknown STL10 split '{split}'")
        images, targets, classes = _torchvision_arrays(cls_name, root, tv_split, download)
        images, targets = _subsample(images, targets.astype(np.int64), num_samples, subset_seed)
        images = _fit_size(images, size, resize)
        spec = dict(name=name, split=split, root=root, size=size, resize=resize,
                    num_samples=num_samples, subset_seed=subset_seed)
        return ArrayImageDataset(images, targets, classes, name, split, spec, mean=mean, std=std)

    builder.__doc__ = f"{cls_name} through torchvision; downloads only with ``download=True``."
    return builder


_register_torchvision("cifar10", "CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_register_torchvision("cifar100", "CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_register_torchvision("stl10", "STL10", (0.4408, 0.4279, 0.3867), (0.2682, 0.2610, 0.2686))


NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test"), "val": ("x_val", "y_val")}


def _npz_images(arr: np.ndarray, path: str, key: str) -> np.ndarray:
    """uint8 (N, H, W, 3) from (N, H, W, 3), (N, 3, H, W) or grayscale (N, H, W[, 1]) arrays."""
    check(arr.dtype == np.uint8, f"'{path}': '{key}' must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    check(arr.ndim == 4, f"'{path}': '{key}' must be (N, H, W, C) or (N, C, H, W), got shape {arr.shape}")
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    check(arr.shape[-1] in (1, 3), f"'{path}': '{key}' must have 1 or 3 channels, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def _read_npz(path: str):
    check(path is not None, "the 'npz' dataset needs root=<path to a .npz file>")
    check(Path(path).is_file(), f"npz file '{path}' does not exist or is not a file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PoisonCamError(f"cannot read npz file '{path}': {e}") from e


@DATASETS.register("npz")
def npz(split: str = "train", root: Optional[str] = None, size: Optional[int] = None, resize: str = "resize",
        num_samples: Optional[int] = None, subset_seed: int = 0) -> ArrayImageDataset:
    """Images in one ``.npz`` file, CIFAR/Keras layout: ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (``x_val``/``y_val`` optional; ``val`` falls back to the test arrays), uint8 images HWC or CHW,
    RGB or grayscale; optional ``classes`` (names). Mean and std come from the train images, so
    both splits are normalised alike.
    """
    data = _read_npz(root)
    if split == "val" and "x_val" not in data.files:
        split_keys = NPZ_KEYS["test"]
    else:
        split_keys = NPZ_KEYS[split]
    missing = [k for k in split_keys + ("x_train",) if k not in data.files]
    check(not missing, f"npz file '{root}' lacks {missing}; it has {sorted(data.files)}")
    try:
        images = _npz_images(data[split_keys[0]], root, split_keys[0])
        targets = np.asarray(data[split_keys[1]]).astype(np.int64).reshape(-1)
        train = images if split == "train" else _npz_images(data["x_train"], root, "x_train")
        classes = [str(c) for c in data["classes"]] if "classes" in data.files else None
    except (OSError, ValueError) as e:
        raise PoisonCamError(f"cannot read npz file '{root}': {e}") from e
    check(len(targets) == len(images), f"npz file '{root}': {len(images)} images but {len(targets)} labels")
    check(len(targets) > 0 and targets.min() >= 0, f"npz file '{root}': labels must be non-negative class ids")
    if classes is None:
        classes = [str(c) for c in range(int(targets.max()) + 1)]
    check(int(targets.max()) < len(classes), f"npz file '{root}': label {int(targets.max())} but {len(classes)} classes")
    sample = train[:: max(1, len(train) // 10000)].reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = tuple(sample.mean(0).round(4).tolist()), tuple(sample.std(0).round(4).tolist())
    images, targets = _subsample(images, targets, num_samples, subset_seed)
    images = _fit_size(images, size, resize)
    spec = dict(name="npz", split=split, root=str(root), size=size, resize=resize,
                num_samples=num_samples, subset_seed=subset_seed)
    return ArrayImageDataset(images, targets, classes, "npz", split, spec, mean=mean, std=std)


@DATASETS.register("folder")
def folder(split: str = "train", root: Optional[str] = None, size: Optional[int] = None,
           num_samples: Optional[int] = None, subset_seed: int = 0,
           files: Optional[List[str]] = None) -> FolderImageDataset:
    """Any ImageFolder tree (e.g. ImageNet-100): ``root/<split>/<class>/*.jpg`` or ``root/<class>/*.jpg``.

    ``size`` resizes the shorter side and centre-crops (images are poisoned after that); ``None``
    keeps the original resolution, as SSL-Backdoor does. ``split='test'`` (or ``'val'``) takes
    ``root/test`` or ``root/val``, or, when ``root`` is itself a ``train`` folder, its sibling
    ``val``/``test``, or ``root`` itself when it is named ``val``/``test``; it never falls back to
    the training images. ``files`` (paths relative to the
    split folder, in order) restricts the set to exactly those images, e.g. the subset solo-learn's
    ``data.fraction`` trained on. A file that is not a readable image is refused, naming it
    (:meth:`FolderImageDataset.check_images`).
    """
    check(root is not None, "the 'folder' dataset needs root=<path to an ImageFolder tree>")
    path = split_folder(Path(root), split)
    spec = dict(name="folder", split=split, root=str(root), size=size, num_samples=num_samples, subset_seed=subset_seed)
    if files is not None:
        spec["files"] = list(files)
    ds = FolderImageDataset(str(path), split, spec, size=size)
    if files is not None:
        ds.select_files(files)
    if num_samples is not None and num_samples < len(ds):
        keep_samples, _ = _subsample(np.arange(len(ds)), ds.targets, num_samples, subset_seed)
        ds.samples = [ds.samples[i] for i in keep_samples]
        ds.targets = ds.targets[keep_samples]
    ds.check_images()  # every command on this folder refuses the same unreadable files, before any work
    return ds


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` under ``root`` (see :func:`folder`); raises when a held-out split has none."""
    if split == "train":
        return root / "train" if (root / "train").is_dir() else root
    candidates = [root / s for s in ("test", "val")]
    if root.name in ("test", "val"):  # a held-out folder given directly (solo-learn's data.val_path)
        return root
    if root.name == "train":
        candidates += [root.parent / s for s in ("val", "test")]
    for c in candidates:
        if c.is_dir():
            return c
    raise PoisonCamError(f"no held-out split for image folder '{root}': expected {' or '.join(map(str, candidates))}")
