"""Image datasets served as ``(PIL.Image RGB, int label)``, with a cheap fingerprint for cache keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.io import hash_obj


class ImageDataset(torch.utils.data.Dataset):
    """Base class: a labelled image set that also knows how to rebuild itself (``spec``).

    Subclasses set ``name``, ``split``, ``classes``, ``targets`` (int64, (N,)) and ``spec``
    (the keyword arguments of :func:`solo_poisoncam.data.build_dataset` that recreate it).
    """

    name: str
    split: str
    classes: List[str]
    targets: np.ndarray
    spec: Dict[str, Any]
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        raise NotImplementedError

    def get_array(self, index: int) -> np.ndarray:
        """The image as uint8 (H, W, 3)."""
        return np.asarray(self[index][0].convert("RGB"))

    def image_size(self, index: int) -> Tuple[int, int]:
        """(width, height) of image ``index`` without decoding pixels where possible."""
        return self[index][0].size

    def image_sizes(self) -> List[Tuple[int, int]]:
        """The distinct (width, height) the set serves, sorted (headers only where possible)."""
        return sorted({tuple(self.image_size(i)) for i in range(len(self))})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        raise NotImplementedError


class ArrayImageDataset(ImageDataset):
    """Images held in memory as one uint8 array (N, H, W, 3)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        name: str,
        split: str,
        spec: Dict[str, Any],
        mean: Optional[Tuple[float, float, float]] = None,
        std: Optional[Tuple[float, float, float]] = None,
    ):
        images = np.asarray(images)
        check(images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8,
              f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        check(len(images) > 0, f"dataset '{name}' ({split}) is empty")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        check(len(self.targets) == len(images), "images and targets differ in length")
        self.classes = list(classes)
        self.name, self.split, self.spec = name, split, dict(spec)
        if mean is not None:
            self.mean, self.std = tuple(mean), tuple(std)
        self._fingerprint: Optional[str] = None

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.targets[index])

    def get_array(self, index: int) -> np.ndarray:
        return self.images[index]

    def image_size(self, index: int) -> Tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])

    def image_sizes(self) -> List[Tuple[int, int]]:
        return [self.image_size(0)]

    def as_tensor(self) -> torch.Tensor:
        """All images as uint8 (N, 3, H, W), sharing memory with the array."""
        return torch.from_numpy(self.images).permute(0, 3, 1, 2)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = hash_obj(self.name, self.split, self.images, self.targets)
        return self._fingerprint


class FolderImageDataset(ImageDataset):
    """An ImageFolder tree (``root/<class>/<image>``), decoded lazily; corrupt files raise naming the file."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

    def __init__(self, root: str, split: str, spec: Dict[str, Any], size: Optional[int] = None):
        root_path = Path(root)
        check(root_path.is_dir(), f"image folder '{root}' does not exist or is not a directory")
        self.classes = sorted(d.name for d in root_path.iterdir() if d.is_dir())
        check(len(self.classes) > 0, f"image folder '{root}' has no class sub-directories")
        samples = []
        for c, cls in enumerate(self.classes):
            for p in sorted((root_path / cls).rglob("*")):
                if p.suffix.lower() in self.EXTENSIONS:
                    samples.append((str(p), c))
        check(len(samples) > 0, f"image folder '{root}' contains no images")
        counts = np.bincount([c for _, c in samples], minlength=len(self.classes))
        empty = [cls for cls, n in zip(self.classes, counts) if n == 0]
        check(not empty, f"image folder '{root}': class folder(s) {empty} hold no images; remove them or add images "
                         "(an empty folder still counts as a class, and sets the default number of clusters)")
        self.root = str(root_path)
        self.samples = samples
        self.targets = np.array([c for _, c in samples], dtype=np.int64)
        self.size = size
        self.name, self.split, self.spec = "folder", split, dict(spec)
        self._fingerprint: Optional[str] = None
        self._header_sizes: Dict[str, Tuple[int, int]] = {}  # filled by check_images

    def select_files(self, files: Sequence[str]) -> None:
        """Keep exactly ``files`` (relative to the folder), in that order; each must exist."""
        by_name = {str(Path(p).relative_to(self.root)): (p, c) for p, c in self.samples}
        missing = [f for f in files if f not in by_name]
        if missing:
            raise PoisonCamError(f"image folder '{self.root}' lacks {len(missing)} listed file(s), "
                                 f"e.g. '{missing[0]}'")
        check(len(files) > 0, f"an empty file list selects no images of '{self.root}'")
        self.samples = [by_name[f] for f in files]
        self.targets = np.array([c for _, c in self.samples], dtype=np.int64)

    def check_images(self) -> None:
        """Read every listed image's header (PIL ``verify``, cheap: no pixels decoded) and refuse the
        folder with one line naming the files that are no image (empty, random bytes, broken PNG), so
        none is ever counted or chosen as a poison; the sizes read serve ``image_size``."""
        bad = []
        for path, _ in self.samples:
            try:
                with Image.open(path) as img:
                    size = img.size
                    img.verify()
                self._header_sizes[path] = size
            except Exception as e:  # PIL raises many types for bad files
                why = "empty file" if Path(path).stat().st_size == 0 else (
                    "not an image" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}")
                bad.append(f"'{Path(path).relative_to(self.root)}' ({why})")
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        check(not bad, f"image folder '{self.root}': cannot read image file(s) {', '.join(bad[:5])}{more}; "
                       "remove or replace them")

    def _open(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            img = Image.open(path)
            img = img.convert("RGB")
        except Exception as e:  # PIL raises many types for bad files
            raise PoisonCamError(f"cannot read image '{path}': {e}") from e
        if self.size is not None:
            img = _resize_center_crop(img, self.size)
        return img

    def __getitem__(self, index: int) -> Tuple[Image.Image, int]:
        return self._open(index), int(self.targets[index])

    def image_size(self, index: int) -> Tuple[int, int]:
        if self.size is not None:
            return self.size, self.size
        path = self.samples[index][0]
        known = self._header_sizes.get(path)
        return known if known is not None else header_size(path)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = folder_fingerprint(self.split, self.size, self.samples, self.root)
        return self._fingerprint


def header_size(path) -> Tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as e:  # PIL raises many types for bad files
        raise PoisonCamError(f"cannot read image '{path}': {e}") from e


def folder_fingerprint(split: str, size: Optional[int], samples, root) -> str:
    """The fingerprint of an image folder's ``(path, class)`` samples under ``root`` served at ``size``: what
    :meth:`FolderImageDataset.fingerprint` gives, for any list of the same files (solo-learn's ImageFolder)."""
    return hash_obj("folder", split, size, file_stats(samples, root))


def file_stats(samples, root) -> List[List[Any]]:
    """[relative path, class, size, mtime] per ``(path, class)`` sample: a folder's fingerprint
    (cheap, and any edited, added or removed file changes it)."""
    stats = []
    for path, c in samples:
        st = Path(path).stat()
        stats.append([str(Path(path).relative_to(root)), int(c), st.st_size, int(st.st_mtime)])
    return stats


def _crop_geometry(width: int, height: int, size: int) -> Tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the folder dataset's serving rule at ``size``."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` then centre-crop a square (the usual eval geometry)."""
    nw, nh, left, top = _crop_geometry(*img.size, size)
    img = img.resize((nw, nh), Image.BICUBIC)
    return img.crop((left, top, left + size, top + size))


def served_box(box: Sequence[float], image_size: Sequence[int], size: Optional[int]) -> np.ndarray:
    """A box (x0, y0, x1, y1; exclusive ends) in an image file of ``image_size`` = (W, H) pixels, in the
    pixels :class:`FolderImageDataset` serves that file at ``size`` (shorter side resized to ``size``,
    then the centred ``size`` x ``size`` crop), clipped to the crop; unchanged for ``size=None``.

    Each axis scales by its own resized / original extent (what the resize does to the pixel grid).

    >>> served_box((100, 50, 140, 70), (500, 375), 32).round(4).tolist()
    [3.6, 4.2667, 7.04, 5.9733]
    """
    b = np.asarray(box, dtype=np.float64)
    if size is None:
        return b
    w, h = int(image_size[0]), int(image_size[1])
    nw, nh, left, top = _crop_geometry(w, h, int(size))
    out = b * np.array([nw / w, nh / h, nw / w, nh / h]) - np.array([left, top, left, top])
    return np.clip(out, 0, size)
