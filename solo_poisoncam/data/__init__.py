"""Datasets: a registry of labelled image sets served as (PIL RGB, label)."""

from solo_poisoncam.data.base import ArrayImageDataset, FolderImageDataset, ImageDataset
from solo_poisoncam.data.registry import DATASETS, build_dataset, dataset_from_spec, read_idx_gz

__all__ = ["ArrayImageDataset", "FolderImageDataset", "ImageDataset", "DATASETS", "build_dataset",
           "dataset_from_spec", "read_idx_gz"]
