"""Fixed-size uint8 batches of a dataset with their dataset indexes: (index, image, label)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from solo_poisoncam.checks import check
from solo_poisoncam.data.base import ArrayImageDataset, ImageDataset


class IndexedImages(torch.utils.data.Dataset):
    """Fixed-size uint8 (3, S, S) images of ``dataset`` restricted to ``indexes``.

    In-memory datasets are materialised once (poisons applied); others are decoded per item.
    """

    def __init__(self, dataset, indexes: Optional[Sequence[int]] = None, size: Optional[int] = None):
        indexes = np.arange(len(dataset)) if indexes is None else np.asarray(indexes, dtype=np.int64)
        tensor = None
        base = getattr(dataset, "base", dataset)  # poisoned / patched wrappers keep their base here
        if isinstance(base, ArrayImageDataset) and (size is None or size == base.images.shape[1]):
            tensor = dataset.as_tensor()[torch.as_tensor(indexes)]
        self._set(dataset, indexes, size, tensor)

    def _set(self, dataset, indexes: np.ndarray, size: Optional[int], tensor: Optional[torch.Tensor]) -> None:
        self.dataset, self.indexes, self.size, self._tensor = dataset, indexes, size, tensor
        self.targets = torch.as_tensor(np.asarray(dataset.targets)[indexes])

    def __len__(self) -> int:
        return len(self.indexes)

    def subset(self, positions) -> "IndexedImages":
        """The images at ``positions`` (rows of this set), at the same size. In-memory rows are sliced from
        this set's tensor: a poisoned set is not materialised again (every poison pasted, or with JPEG
        every image encoded)."""
        pos = np.asarray(positions, dtype=np.int64)
        out = IndexedImages.__new__(IndexedImages)
        out._set(self.dataset, self.indexes[pos], self.size,
                 None if self._tensor is None else self._tensor[torch.as_tensor(pos)])
        return out

    def as_tensor(self) -> torch.Tensor:
        """All images as uint8 (N, 3, S, S), row j for ``indexes[j]`` (decoded now if not in memory)."""
        return self._tensor if self._tensor is not None else self.take(range(len(self)))

    def take(self, positions) -> torch.Tensor:
        """uint8 (len(positions), 3, S, S) images at the given positions."""
        if self._tensor is not None:
            return self._tensor[torch.as_tensor(positions, dtype=torch.long)]
        return torch.stack([self[int(j)][1] for j in positions])

    def __getitem__(self, j: int):
        i = int(self.indexes[j])
        if self._tensor is not None:
            img = self._tensor[j]
        else:
            arr = self.dataset.get_array(i)
            if self.size is not None and arr.shape[:2] != (self.size, self.size):
                arr = np.asarray(Image.fromarray(arr).resize((self.size, self.size), Image.BICUBIC))
            arr = np.ascontiguousarray(arr)
            if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch warns on those
                arr = arr.copy()
            img = torch.from_numpy(arr).permute(2, 0, 1)
        return i, img, self.targets[j]


def image_side(dataset: ImageDataset, size: Optional[int]) -> int:
    """The side ``dataset`` is served at for training: ``size``, or its images' own when they all
    share one (images of mixed sizes cannot be batched: refused, naming ``--size``)."""
    if size is not None:
        return int(size)
    sizes = dataset.image_sizes()
    where = f" in '{dataset.root}'" if getattr(dataset, "root", None) else ""
    check(len(sizes) == 1, f"the images{where} differ in size ({len(sizes)} sizes, e.g. {sizes[0][0]}x{sizes[0][1]} "
                           f"and {sizes[-1][0]}x{sizes[-1][1]} px) and training needs one: give --size S to serve "
                           "them all at side S")
    w, h = sizes[0]
    return int(min(w, h))
