"""Data layer: npz loading/validation, torchvision fallback with caching, batch augmentation and
the in-memory :class:`ImageDataModule` (served format: uint8 (N, 3, 32, 32))."""

from .augment import random_crop, random_flip
from .datamodule import BatchLoader, ImageDataModule, clear_cache
from .npz import (
    DATASET_NAMES,
    DATASET_STATS,
    DataError,
    dataset_path,
    ensure_dataset_file,
    load_npz,
    resolve_dataset,
    to_served_format,
    write_npz_atomic,
)

__all__ = [
    "BatchLoader",
    "DATASET_NAMES",
    "DATASET_STATS",
    "DataError",
    "ImageDataModule",
    "clear_cache",
    "dataset_path",
    "ensure_dataset_file",
    "load_npz",
    "random_crop",
    "random_flip",
    "resolve_dataset",
    "to_served_format",
    "write_npz_atomic",
]
