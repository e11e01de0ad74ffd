"""Poisoning the training sets solo-learn builds.

``solo.data.pretrain_dataloader.prepare_datasets`` returns ``dataset_with_index(ImageFolder | CIFAR10 |
CIFAR100 | STL10 | H5Dataset | CustomDatasetWithoutLabels)`` after its ``data.fraction`` subsetting.
:class:`SoloImageView` shows that object through our :class:`ImageDataset` protocol (raw RGB images,
no augmentation), so :func:`make_manifest` draws the poisons over exactly the images solo trains on.
:class:`PoisonedSoloDataset` takes over the dataset's transform and pastes the trigger on the raw
PIL image before solo's augmentation, serving solo's ``(index, crops, target)``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.data.base import ImageDataset, file_stats, folder_fingerprint, header_size
from solo_poisoncam.io import hash_obj
from solo_poisoncam.models.threat_model import run_mean_std
from solo_poisoncam.poison.attacks import Attack, build_attack
from solo_poisoncam.poison.dataset import PoisonedDataset, make_manifest
from solo_poisoncam.poison.manifest import PoisonManifest

UNLABELLED = "unlabelled"


class SoloImageView(ImageDataset):
    """A solo-learn training set as an :class:`ImageDataset`: ``(PIL RGB, label)``, no augmentation.

    Reads through a shallow copy of the dataset with ``transform=None``, so it never depends on
    (or changes) the transform solo trains with. Unlabelled images have label -1 and the single
    pseudo-class ``"unlabelled"``.

    Args:
        dataset: what solo's ``prepare_datasets`` returned (``__getitem__`` gives ``(index, img, y)``).
        spec: the manifest's data description; :func:`solo_view_spec` makes one that our
            ``build_dataset`` can rebuild where the data allow it.
        mean, std: solo's normalisation of this data set (the detector's fill value).
    """

    def __init__(self, dataset, spec: Dict[str, Any], mean=None, std=None):
        self.dataset = dataset
        self._raw = copy.copy(dataset)
        self._raw.transform = None
        if hasattr(self._raw, "target_transform"):
            self._raw.target_transform = None
        self.kind = _kind(dataset)
        self.targets = _targets(dataset, self.kind)
        check(len(self.targets) > 0, f"the solo-learn training set ({spec}) is empty")
        classes = getattr(dataset, "classes", None)
        self.classes = list(classes) if classes else [UNLABELLED]
        self.name, self.split, self.spec = str(spec.get("name")), str(spec.get("split", "train")), dict(spec)
        if mean is not None:
            self.mean, self.std = tuple(mean), tuple(std)
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        _, img, _ = self._raw[index]
        if not isinstance(img, Image.Image):
            raise PoisonCamError(f"solo-learn item {index} is a {type(img).__name__}, not a PIL image; "
                                 "the dataset still applies a transform")
        return img.convert("RGB"), int(self.targets[index])

    def get_array(self, index: int) -> np.ndarray:
        if self.kind == "cifar":
            return np.asarray(self.dataset.data[index])
        if self.kind == "stl10":
            return np.ascontiguousarray(np.transpose(self.dataset.data[index], (1, 2, 0)))
        return np.asarray(self[index][0])

    def image_size(self, index: int) -> Tuple[int, int]:
        if self.kind == "cifar":
            return int(self.dataset.data.shape[2]), int(self.dataset.data.shape[1])
        if self.kind == "stl10":
            return int(self.dataset.data.shape[3]), int(self.dataset.data.shape[2])
        if self.kind == "folder":
            return header_size(self.dataset.samples[index][0])
        if self.kind == "no_labels":
            return header_size(Path(self.dataset.root) / self.dataset.images[index])
        return self[index][0].size

    def fingerprint(self) -> str:
        """Content hash; equal to the one of our own dataset when ``spec`` is rebuildable by ``build_dataset``."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self)
        return self._fingerprint


def _kind(ds) -> str:
    if hasattr(ds, "samples") and hasattr(ds, "loader"):
        return "folder"  # ImageFolder (custom, imagenet, imagenet100)
    if hasattr(ds, "images") and hasattr(ds, "root") and not hasattr(ds, "data"):
        return "no_labels"  # CustomDatasetWithoutLabels
    if hasattr(ds, "data") and hasattr(ds, "labels"):
        return "stl10"
    if hasattr(ds, "data") and hasattr(ds, "targets"):
        return "cifar"
    if hasattr(ds, "_data") and hasattr(ds, "h5_path"):
        return "h5"
    return "other"


def _targets(ds, kind: str) -> np.ndarray:
    # ImageFolder: .samples, not .targets: solo's data.fraction rewrites .samples only
    if kind == "folder":
        return np.array([int(y) for _, y in ds.samples], dtype=np.int64)
    if kind == "no_labels":
        return np.full(len(ds.images), -1, dtype=np.int64)
    if kind == "stl10":
        return np.asarray(ds.labels if ds.labels is not None else np.full(len(ds.data), -1), dtype=np.int64)
    if kind == "cifar":
        return np.asarray(ds.targets, dtype=np.int64)
    if kind == "h5":
        return np.array([int(y) for _, _, y in ds._data], dtype=np.int64)
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise PoisonCamError(f"cannot poison a solo-learn dataset of type {type(ds).__mro__[1].__name__}: "
                             "it has no .samples, .data or .targets")
    return np.asarray(targets, dtype=np.int64)


def _fingerprint(view: SoloImageView) -> str:
    ds, kind = view.dataset, view.kind
    if kind == "folder":
        if view.spec.get("name") == "folder":  # FolderImageDataset's formula: `poisoncam detect` can rebuild it
            return folder_fingerprint(view.split, None, ds.samples, ds.root)
        return hash_obj("solo-learn", view.spec, file_stats(ds.samples, ds.root))
    if kind in ("cifar", "stl10"):
        images = ds.data if kind == "cifar" else np.transpose(ds.data, (0, 2, 3, 1))
        return hash_obj(view.name, view.split, np.ascontiguousarray(images), view.targets)
    if kind == "no_labels":
        root = Path(ds.root)
        stats = [[name, (root / name).stat().st_size, int((root / name).stat().st_mtime)] for name in ds.images]
        return hash_obj("solo-learn", view.spec, stats)
    if kind == "h5":
        st = Path(ds.h5_path).stat()
        return hash_obj("solo-learn", view.spec, [list(r) for r in ds._data], st.st_size, int(st.st_mtime))
    return hash_obj("solo-learn", view.spec, view.targets, [np.asarray(view[i][0]) for i in range(len(view))])


def solo_view_spec(cfg: DictConfig, dataset=None) -> Dict[str, Any]:
    """Where the data came from. Where our ``build_dataset`` rebuilds exactly the same images (an
    ImageFolder, whole or the ``data.fraction`` subset solo drew, listed file by file; CIFAR) the
    spec is its keyword arguments, so the manifest works with ``poisoncam detect --manifest``;
    otherwise it describes the solo-learn run."""
    data = cfg.data
    whole = not (data.fraction and 0 < float(data.fraction) < 1)
    if data.format == "image_folder" and not data.no_labels and data.dataset in ("custom", "imagenet", "imagenet100"):
        # absolute: the manifest must rebuild from any working directory (the fingerprint holds relative names)
        spec = {"name": "folder", "split": "train", "root": str(Path(data.train_path).resolve()), "size": None}
        if not whole:
            if dataset is None or not hasattr(dataset, "samples"):
                raise PoisonCamError("a data.fraction subset needs the dataset solo built to list its files")
            root = Path(dataset.root)
            spec["files"] = [str(Path(p).relative_to(root)) for p, _ in dataset.samples]
        return spec
    if data.dataset in ("cifar10", "cifar100"):
        return {"name": data.dataset, "split": "train", "root": str(data.train_path), "size": None,
                "resize": "resize", "num_samples": None, "subset_seed": 0}
    return {"name": "solo-learn", "split": "train", "dataset": str(data.dataset), "train_path": str(data.train_path),
            "format": str(data.format), "no_labels": bool(data.no_labels), "fraction": float(data.fraction)}


def view_from_cfg(dataset, cfg: DictConfig) -> SoloImageView:
    mean, std = run_mean_std(OmegaConf.to_container(cfg, resolve=True))
    return SoloImageView(dataset, solo_view_spec(cfg, dataset), mean, std)


class PoisonedSoloDataset(torch.utils.data.Dataset):
    """solo's training set with the manifest's poisons pasted on the raw image, before solo's augmentation.

    Takes over ``base.transform`` (the base then serves raw PIL images), keeps ``len`` and solo's
    item format ``(index, crops, target)``, and forwards any other attribute to the base
    (``.samples``, ``.classes``, ...).
    """

    def __init__(self, base, manifest: PoisonManifest, view: Optional[SoloImageView] = None,
                 attack: Optional[Attack] = None):
        self.base = base
        self.view = view if view is not None else SoloImageView(base, manifest.dataset)
        manifest.check_matches(self.view)
        self.transform = base.transform
        base.transform = None
        self.manifest = manifest
        self.attack = attack or build_attack(manifest.attack)
        self._boxes = manifest.box_map()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        index_, img, target = self.base[index]
        box = None if self.manifest.in_files else self._boxes.get(int(index))  # a written folder holds its poisons
        if box is not None:
            img = Image.fromarray(self.attack.apply(np.asarray(img.convert("RGB")), tuple(int(v) for v in box)))
        elif getattr(self.attack, "jpeg", None) and not self.manifest.in_files:  # clean images stored alike
            img = Image.fromarray(self.attack.store(np.asarray(img.convert("RGB"))))
        if self.transform is not None:
            img = self.transform(img)
        return index_, img, target

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("base", "view", "manifest", "transform", "attack", "_boxes"):
            raise AttributeError(name)  # not set yet (unpickling): never recurse
        return getattr(self.base, name)

    def eval_view(self) -> PoisonedDataset:
        """The poisoned images without augmentation, as our :class:`PoisonedDataset` (the detector's input)."""
        return PoisonedDataset(self.view, self.manifest, attack=self.attack, verify=False)


def written_manifest_for(manifest: PoisonManifest, view: SoloImageView, path: str = "") -> PoisonManifest:
    """The manifest of a written folder (``poisoncam poison --write-folder``) for solo-learn's ``data.train_path``:
    refused unless solo's training set is exactly the folder's training files (count, then the fingerprint at the
    manifest's side: names, classes, sizes, modification times); then re-served as solo reads the files, at their
    own resolution (boxes in the files' pixels, ``size`` None) and rooted at ``data.train_path``."""
    ours = view.spec.get("name") == "folder" and view.kind == "folder"
    check(ours, f"poison.manifest '{path}' is a written folder's: train on it as an ImageFolder "
                f"(data.format=image_folder, data.dataset=custom / imagenet / imagenet100), got {view.spec}")
    source = Path(str(manifest.dataset.get("root"))) / "train"
    fp = folder_fingerprint(view.split, manifest.dataset.get("size"), view.dataset.samples, view.dataset.root)
    same_count = len(view) == manifest.num_samples
    check(same_count and fp == manifest.fingerprint,
          f"poison.manifest '{path}' does not match data.train_path: it describes the {manifest.num_samples} training "
          f"files written to '{source}', and data.train_path='{view.spec.get('root')}' gives solo-learn {len(view)} "
          "images" + (" whose names, classes, sizes or modification times differ (another folder, or files changed "
                      "since they were written)" if same_count else "")
          + "; train on the written folder's train/, whole (data.fraction -1)")
    return manifest.served_as(view.spec, view.fingerprint())


def poison_solo_dataset(dataset, cfg: DictConfig) -> PoisonedSoloDataset:
    """Draw (or replay, with ``poison.manifest``) the poisons over ``dataset`` and wrap it. A written folder's
    manifest pastes nothing (its files hold the poisons): it gives the ground truth (:func:`written_manifest_for`).

    Call it on what ``prepare_datasets`` returned, i.e. after solo's ``data.fraction`` subsetting,
    so the manifest's indexes are the indexes solo's batches carry.
    """
    from solo_poisoncam.solo_adapter.config import attack_config

    view = view_from_cfg(dataset, cfg)
    p = cfg.poison
    if p.manifest:
        manifest = PoisonManifest.load(p.manifest)
        if manifest.in_files:
            manifest = written_manifest_for(manifest, view, str(p.manifest))
        manifest.check_matches(view)
        attack = build_attack(manifest.attack)
    else:
        attack = build_attack(attack_config(cfg))
        manifest = make_manifest(view, attack, target=int(p.target), rate=float(p.rate), rate_of=str(p.rate_of),
                                 targeted=bool(p.targeted), seed=int(p.seed))
    return PoisonedSoloDataset(dataset, manifest, view, attack)


__all__ = ["SoloImageView", "PoisonedSoloDataset", "poison_solo_dataset", "solo_view_spec", "view_from_cfg",
           "written_manifest_for"]
