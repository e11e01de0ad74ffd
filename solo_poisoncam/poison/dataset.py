"""Poisoned-dataset wrappers: poison the raw image before any augmentation, by the manifest."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from solo_poisoncam.checks import check, check_rate
from solo_poisoncam.data.base import ArrayImageDataset, ImageDataset
from solo_poisoncam.data.registry import dataset_from_spec
from solo_poisoncam.io import hash_obj
from solo_poisoncam.poison.attacks import EVAL_REGION, Attack, build_attack
from solo_poisoncam.poison.manifest import PoisonManifest, select_poison_indexes


def make_manifest(dataset: ImageDataset, attack: Attack, target: int, rate: float, rate_of: str = "target",
                  targeted: bool = True, seed: int = 0) -> PoisonManifest:
    """Choose the poisons and place the trigger on each (in the attack's own region); nothing is written.

    Selection and placement use independent RNG streams of ``seed``, so a different trigger size
    poisons the same images.
    """
    rate = check_rate(rate)
    check(len(dataset) > 0, "the dataset is empty")
    check(0 <= target < dataset.num_classes,
          f"target class {target} does not exist; the dataset has classes 0..{dataset.num_classes - 1}")
    indexes = select_poison_indexes(dataset.targets, target, rate, rate_of, targeted, seed)
    rng = np.random.default_rng([seed, 1])
    sizes = np.array([dataset.image_size(int(i)) for i in indexes], dtype=np.int64)
    boxes = np.array([attack.sample_box(int(w), int(h), rng) for w, h in sizes], dtype=np.int64)
    return PoisonManifest(
        dataset=dict(dataset.spec), fingerprint=dataset.fingerprint(), num_samples=len(dataset),
        attack=attack.config(), target=int(target), target_name=str(dataset.classes[target]),
        rate=rate, rate_of=rate_of, targeted=bool(targeted), seed=int(seed),
        indexes=indexes, boxes=boxes.reshape(-1, 4), image_sizes=sizes.reshape(-1, 2),
    )


class PoisonedDataset(torch.utils.data.Dataset):
    """``base`` with the manifest's poisons applied on the fly, before ``transform``.

    Items are ``(transform(img), label)``, or ``(index, transform(img), label)`` with
    ``return_index=True`` (solo-learn's convention). Labels are the true labels: the attack
    changes pixels only. An attack that stores images as JPEG re-encodes the clean images too. A
    written folder's manifest (``manifest.in_files``) pastes nothing: its files hold the poisons,
    and its boxes are mapped to the pixels ``base`` serves.
    """

    def __init__(self, base: ImageDataset, manifest: PoisonManifest, transform: Optional[Callable] = None,
                 return_index: bool = False, attack: Optional[Attack] = None, verify: bool = True):
        if verify:
            manifest.check_matches(base)
        self.base, self.manifest, self.transform, self.return_index = base, manifest, transform, return_index
        self.attack = attack or build_attack(manifest.attack)
        boxes, _ = manifest.served_boxes(getattr(base, "size", None))
        self._boxes = {int(i): b for i, b in zip(manifest.indexes, boxes)}
        self.targets = base.targets
        self.classes = base.classes
        self.mean, self.std = base.mean, base.std

    @classmethod
    def from_manifest(cls, manifest: PoisonManifest, **kwargs: Any) -> "PoisonedDataset":
        """The poisoned set a manifest describes, its base dataset rebuilt from the manifest's spec."""
        return cls(dataset_from_spec(manifest.dataset), manifest, **kwargs)

    def __len__(self) -> int:
        return len(self.base)

    def fingerprint(self) -> str:
        """The content hash of the poisoned images: the clean data's and the poisons' (attack, indexes, boxes)."""
        m = self.manifest
        return hash_obj("poisoned", self.base.fingerprint(), m.attack, m.indexes, m.boxes)

    @property
    def is_poison(self) -> np.ndarray:
        return self.manifest.is_poison()

    def box(self, index: int) -> Optional[np.ndarray]:
        """The trigger box of image ``index`` in the pixels it is served in (None: a clean image)."""
        return self._boxes.get(int(index))

    def get_array(self, index: int) -> np.ndarray:
        arr = self.base.get_array(index)
        if self.manifest.in_files:
            return arr
        box = self._boxes.get(int(index))
        return self.attack.apply(arr, tuple(int(v) for v in box)) if box is not None else self.attack.store(arr)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.get_array(index))
        label = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        return (index, img, label) if self.return_index else (img, label)

    def as_tensor(self) -> torch.Tensor:
        """All (poisoned) images as uint8 (N, 3, H, W); only for in-memory bases."""
        check(isinstance(self.base, ArrayImageDataset), "as_tensor() needs an in-memory (array) dataset")
        images = self.base.images.copy()
        # stored as JPEG: every image changes, otherwise the poisons only
        for i in (range(len(images)) if getattr(self.attack, "jpeg", None) else self._boxes):
            images[i] = self.get_array(int(i))
        return torch.from_numpy(images).permute(0, 3, 1, 2)


class PatchedDataset(torch.utils.data.Dataset):
    """The evaluation set for ASR / FP: every non-target image with the trigger at a random place.

    Patch triggers go anywhere in ``region`` (10-90% of the side, SSL-Backdoor's patched
    validation set). ``control=True`` pastes a same-size patch of one random colour instead (the
    reference for backdoor strength). Items are ``(transform(img), true label)``.
    """

    def __init__(self, base: ImageDataset, attack: Attack, target: int, seed: int = 0,
                 region: Sequence[float] = EVAL_REGION, control: bool = False,
                 transform: Optional[Callable] = None):
        check(0 <= target < base.num_classes, f"target class {target} does not exist")
        self.base, self.attack, self.target, self.transform, self.control = base, attack, target, transform, control
        self.indexes = np.flatnonzero(np.asarray(base.targets) != target).astype(np.int64)
        check(len(self.indexes) > 0, "no non-target images to patch")
        rng = np.random.default_rng([seed, 2])
        self.boxes = np.array([attack.sample_box(*base.image_size(int(i)), rng, region) for i in self.indexes],
                              dtype=np.int64).reshape(-1, 4)
        self.colours = rng.integers(0, 256, size=(len(self.indexes), 3)).astype(np.uint8)
        self.targets = np.asarray(base.targets)[self.indexes]
        self.classes = base.classes
        self.mean, self.std = base.mean, base.std

    def __len__(self) -> int:
        return len(self.indexes)

    def get_array(self, j: int) -> np.ndarray:
        arr = self.base.get_array(int(self.indexes[j]))
        x0, y0, x1, y1 = (int(v) for v in self.boxes[j])
        if self.control:  # stored like the patched image, so the two differ in the patch only
            out = arr.copy()
            out[y0:y1, x0:x1] = self.colours[j]
            return self.attack.store(out)
        return self.attack.apply(arr, (x0, y0, x1, y1))

    def __getitem__(self, j: int) -> Tuple[Any, int]:
        img = Image.fromarray(self.get_array(j))
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[j])

    def as_tensor(self) -> torch.Tensor:
        """All patched images as uint8 (M, 3, H, W)."""
        return torch.from_numpy(np.stack([self.get_array(j) for j in range(len(self))])).permute(0, 3, 1, 2)


