"""The poison manifest: the only source of ground truth (which index is poisoned, and where)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.data.base import served_box
from solo_poisoncam.io import PathLike, read_json, write_json

MANIFEST_VERSION = 1


@dataclass
class PoisonManifest:
    """Ground truth of one poisoning.

    Attributes:
        dataset: spec that rebuilds the poisoned dataset (``build_dataset(**spec)``), plus nothing else.
        fingerprint: the dataset's content hash when poisoned; a manifest never applies to other data.
        num_samples: dataset length N.
        attack: the attack config (``build_attack(attack)`` replays it).
        target: target class index; ``target_name`` its name.
        rate, rate_of: the requested rate and what it is a fraction of ("target" class or "all").
        targeted: poisons drawn only from the target class (SSL-Backdoor) or from every class.
        seed: RNG seed of the selection and placement.
        indexes: (P,) sorted int64 dataset indices of the poisoned images.
        boxes: (P, 4) int64 trigger boxes (x0, y0, x1, y1, exclusive ends) in the pixel grid of the
            image as the dataset serves it (after the dataset's own resize, before augmentation);
            for a written folder (``written``), in the image file's own pixels.
        image_sizes: (P, 2) (width, height) of those images (for a written folder: of the files).
        written: None for poisons pasted on the fly; for a poisoned folder written to disk
            (``poison/folder.py``) its settings: the trigger is in the files, and ``dataset['size']``
            is the side the folder is served at (:meth:`served_boxes` maps the boxes there).
    """

    dataset: Dict[str, Any]
    fingerprint: str
    num_samples: int
    attack: Dict[str, Any]
    target: int
    target_name: str
    rate: float
    rate_of: str
    targeted: bool
    seed: int
    indexes: np.ndarray
    boxes: np.ndarray
    image_sizes: np.ndarray
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION
    written: Optional[Dict[str, Any]] = None

    def __post_init__(self):
        self.indexes = np.asarray(self.indexes, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
        self.image_sizes = np.asarray(self.image_sizes, dtype=np.int64).reshape(-1, 2)
        check(len(self.indexes) == len(self.boxes) == len(self.image_sizes),
              "manifest indexes, boxes and image_sizes differ in length")
        check(np.all(np.diff(self.indexes) > 0), "manifest indexes must be sorted and unique")
        if len(self.indexes):
            check(self.indexes[0] >= 0 and self.indexes[-1] < self.num_samples,
                  "manifest indexes fall outside the dataset")

    @property
    def num_poisons(self) -> int:
        return int(len(self.indexes))

    def is_poison(self) -> np.ndarray:
        """(N,) bool: ground truth per dataset index."""
        mask = np.zeros(self.num_samples, dtype=bool)
        mask[self.indexes] = True
        return mask

    @property
    def in_files(self) -> bool:
        """The trigger is in the image files (a written folder), not pasted when an image is served."""
        return self.written is not None

    def box_map(self) -> Dict[int, np.ndarray]:
        return {int(i): b for i, b in zip(self.indexes, self.boxes)}

    def served_boxes(self, size: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
        """(P, 4) float boxes and (P, 2) image sizes in the pixels the data are served in: the stored
        ones, or for a written folder its file boxes through the folder dataset's resize and centre
        crop at ``size`` (the manifest's own: ``dataset['size']``; None serves the files as they are)."""
        if not self.in_files or size is None:
            return self.boxes.astype(np.float64), self.image_sizes
        boxes = np.array([served_box(b, wh, size) for b, wh in zip(self.boxes, self.image_sizes)]).reshape(-1, 4)
        return boxes, np.full((len(boxes), 2), int(size), dtype=np.int64)

    def served_as(self, dataset: Dict[str, Any], fingerprint: str) -> "PoisonManifest":
        """This written folder's manifest for the same files served as ``dataset`` (its spec) with
        ``fingerprint``: the boxes stay in the files' pixels, so only the data it names change."""
        check(self.in_files, "only a written folder's manifest (poisoncam poison --write-folder) can be re-served")
        d = self.to_dict()
        d.update(dataset=dict(dataset), fingerprint=fingerprint)
        d.pop("created")
        return PoisonManifest.from_dict(d)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "version": self.version,
            "created": self.created,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "num_samples": self.num_samples,
            "attack": self.attack,
            "target": self.target,
            "target_name": self.target_name,
            "rate": self.rate,
            "rate_of": self.rate_of,
            "targeted": self.targeted,
            "seed": self.seed,
            "num_poisons": self.num_poisons,
            "poisons": [
                {"index": int(i), "box": [int(v) for v in b], "image_size": [int(v) for v in s]}
                for i, b, s in zip(self.indexes, self.boxes, self.image_sizes)
            ],
            # only where set, so manifests of poisons pasted on the fly keep their hash
            **({"written": self.written} if self.written is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PoisonManifest":
        try:
            check(d.get("version") == MANIFEST_VERSION,
                  f"manifest version {d.get('version')} is not supported (expected {MANIFEST_VERSION})")
            poisons = d["poisons"]
            return cls(
                dataset=d["dataset"], fingerprint=d["fingerprint"], num_samples=int(d["num_samples"]),
                attack=d["attack"], target=int(d["target"]), target_name=d.get("target_name", str(d["target"])),
                rate=float(d["rate"]), rate_of=d["rate_of"], targeted=bool(d["targeted"]), seed=int(d["seed"]),
                indexes=[p["index"] for p in poisons],
                boxes=np.array([p["box"] for p in poisons], dtype=np.int64).reshape(-1, 4),
                image_sizes=np.array([p["image_size"] for p in poisons], dtype=np.int64).reshape(-1, 2),
                created=d.get("created", ""), version=d["version"], written=d.get("written"),
            )
        except (KeyError, TypeError) as e:
            raise PoisonCamError(f"malformed manifest: missing or bad field {e}") from e

    def save(self, path: PathLike) -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: PathLike) -> "PoisonManifest":
        p = Path(path)
        if p.is_dir():
            p = p / "manifest.json"
        check(p.is_file(), f"manifest '{path}' does not exist")
        try:
            d = read_json(p)
        except ValueError as e:
            raise PoisonCamError(f"manifest '{p}' is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def check_matches(self, dataset) -> None:
        """Raise unless ``dataset`` is the data this manifest was made for."""
        check(len(dataset) == self.num_samples,
              f"manifest is for a dataset of {self.num_samples} images, this one has {len(dataset)} "
              f"(manifest dataset: {self.dataset})")
        fp = dataset.fingerprint()
        size = getattr(dataset, "size", None)
        check(not self.in_files or size == self.dataset.get("size"),
              f"this manifest's boxes are mapped to its folder served at --size {self.dataset.get('size')}, "
              f"this dataset serves it at {size}; serve it at --size {self.dataset.get('size')}, or write a manifest "
              "for another side with 'poisoncam poison --reserve MANIFEST --size N --out DIR'")
        check(fp == self.fingerprint,
              f"manifest was made for other data (fingerprint {self.fingerprint}, this dataset {fp}; "
              f"manifest dataset: {self.dataset})")

    def summary(self) -> str:
        kind = self.attack.get("name")
        share = self.num_poisons / max(1, self.num_samples)
        return (f"poisoned {self.num_poisons}/{self.num_samples} images ({share:.2%}) of "
                f"{self.dataset.get('name')}:{self.dataset.get('split')} with '{kind}', target "
                f"{self.target} ({self.target_name}), rate {self.rate} of {self.rate_of}, seed {self.seed}")


def select_poison_indexes(targets: np.ndarray, target: int, rate: float, rate_of: str = "target",
                          targeted: bool = True, seed: int = 0) -> np.ndarray:
    """Choose which images to poison.

    ``rate_of="target"``: ``round(rate * class size)`` images of the target class;
    ``rate_of="all"``: ``round(rate * N)`` images, from the target class when ``targeted``
    (must fit in it) else from every class. Same seed, same indexes.
    """
    targets = np.asarray(targets)
    check(rate_of in ("target", "all"), f"rate_of must be 'target' or 'all', got '{rate_of}'")
    pool = np.flatnonzero(targets == target) if targeted else np.arange(len(targets))
    if rate_of == "target":
        check(targeted, "rate_of='target' needs a targeted attack; use rate_of='all' for untargeted poisoning")
        k = round(rate * len(pool))
    else:
        k = round(rate * len(targets))
    check(k >= 1, f"rate {rate} of {rate_of} poisons no image ({len(pool)} candidates); raise the rate")
    check(k <= len(pool), f"rate {rate} of all asks for {k} poisons but the target class has only {len(pool)} "
                          f"images; lower the rate or use untargeted=True")
    rng = np.random.default_rng([seed, 0])
    return np.sort(rng.choice(pool, size=k, replace=False)).astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of boxes (..., 4) in (x0, y0, x1, y1) with exclusive ends."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)



__all__ = ["PoisonManifest", "select_poison_indexes", "box_iou", "MANIFEST_VERSION"]
