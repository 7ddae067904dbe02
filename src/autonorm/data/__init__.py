"""Data layer (served format: uint8 (N, 3, 32, 32)):

- :mod:`.npz`: the ``.npz`` format (reading, validation, atomic writing, the served layout, paths);
- :mod:`.download`: a missing full set fetched with torchvision and cached as ``.npz``;
- :mod:`.augment`: batch augmentation with tensor ops; :mod:`.loader`: :class:`BatchLoader`;
- :mod:`.arguments`: the datamodule's arguments, checked once; :mod:`.datamodule`: :class:`ImageDataModule`;
- :mod:`.domains`: the generated digit target domains.
"""

from .augment import random_crop, random_flip
from .datamodule import ImageDataModule
from .download import ensure_dataset_file, resolve_dataset
from .loader import BatchLoader
from .npz import DATASET_NAMES, DATASET_STATS, DataError, dataset_path, load_npz, to_served_format, write_npz_atomic

__all__ = [
    "BatchLoader",
    "DATASET_NAMES",
    "DATASET_STATS",
    "DataError",
    "ImageDataModule",
    "dataset_path",
    "ensure_dataset_file",
    "load_npz",
    "random_crop",
    "random_flip",
    "resolve_dataset",
    "to_served_format",
    "write_npz_atomic",
]
