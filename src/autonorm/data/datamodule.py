"""In-memory LightningDataModule serving (N, 3, 32, 32) uint8 image tensors as normalized batches.

The whole data set is held as uint8 tensors (optionally resident on the GPU), read once per
process (a small cache keyed by the file's identity); batches are cut, augmented (random crop,
then horizontal flip) and normalized on the fly by :class:`~autonorm.data.loader.BatchLoader`.
The datamodule saves the training epoch counter with :meth:`ImageDataModule.state_dict`, so a
resumed run sees the same data order as an uninterrupted one.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from .arguments import as_triple, check_arguments, resolve_device
from .download import ensure_dataset_file
from .loader import BatchLoader, derive_seed, seeded_generator
from .npz import DATASET_STATS, DataError, dataset_path, load_npz, to_served_format

__all__ = ["ImageDataModule"]

_SPLIT_STREAM = 0x5EED_0001  # seed-sequence tag: the split's stream, independent of the epochs' (0x5EED_0002)
_TEST_ORDER_SEED = 20240601  # fixed: the test set order is the same for every run seed


# ----------------------------------------------------------------------------- process-wide cache
_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2  # each entry holds a whole served data set


def _load_served(name: str, root: str, download: bool) -> dict[str, Any]:
    """Served-format tensors for ``name``, cached per process by file identity (path, size, mtime)."""
    path = ensure_dataset_file(name, root, download)
    st = Path(path).stat()
    key = (name, str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    raw = load_npz(path, name)
    served = {
        "x_train": to_served_format(raw["x_train"], name),
        "y_train": torch.from_numpy(raw["y_train"]),
        "x_test": to_served_format(raw["x_test"], name),
        "y_test": torch.from_numpy(raw["y_test"]),
        "classes": list(raw["classes"]),
    }
    del raw
    with _CACHE_LOCK:
        _CACHE[key] = served
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return served



class ImageDataModule(pl.LightningDataModule):
    """MNIST / CIFAR-10 (or their packaged minis) as in-memory uint8 tensors (N, 3, 32, 32).

    Args:
        name: "mnist", "cifar10", "mnist_mini" or "cifar10_mini".
        root: folder holding ``<name>.npz`` (full sets only; downloads are cached there).
        batch_size: training batch size (training drops the last incomplete batch).
        eval_batch_size: validation/test batch size.
        val_size: validation images taken from the training set: a count (int >= 0) or a fraction
            in [0, 1). The split is a seeded shuffle (not stratified).
        seed: seeds the train/val split and the per-epoch order and augmentation.
        crop_padding: random-crop padding in pixels (0 = no crop).
        flip: random horizontal flips (p = 0.5).
        mean, std: per-channel normalization on the [0, 1] scale; default ``DATASET_STATS[name]``.
        download: allow torchvision to download a missing full data set.
        train_subset: keep only the first k images of the (shuffled) training split.
        device: where batches are produced: None (CPU; Lightning moves them), "cpu", "cuda[:i]",
            or "auto". With a CUDA device the whole data set is kept resident on the GPU.

    After :meth:`setup`: ``train_x, train_y, val_x, val_y, test_x, test_y`` (uint8 (N, 3, 32, 32) /
    int64 (N,), on ``device`` or CPU), ``classes``, ``num_classes``, ``mean``, ``std`` (float (3,)).
    The test set keeps a fixed shuffled order (the same for every seed), so prefixes are class-mixed.
    """

    def __init__(
        self,
        name: str = "mnist_mini",
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 512,
        val_size: int | float = 0.1,
        seed: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        download: bool = True,
        train_subset: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        check_arguments(name, batch_size, eval_batch_size, val_size, seed, crop_padding, train_subset, mean, std, device)
        stats = DATASET_STATS[name]
        mean_t = as_triple(stats["mean"] if mean is None else mean, "mean")
        std_t = as_triple(stats["std"] if std is None else std, "std")

        self.name = name
        self.root = str(root)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.val_size = val_size
        self.seed = int(seed)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.download = bool(download)
        self.train_subset = None if train_subset is None else int(train_subset)
        self.device = resolve_device(device)
        self.mean = torch.tensor(mean_t, dtype=torch.float32)
        self.std = torch.tensor(std_t, dtype=torch.float32)

        self.train_x: torch.Tensor | None = None
        self.train_y: torch.Tensor | None = None
        self.val_x: torch.Tensor | None = None
        self.val_y: torch.Tensor | None = None
        self.test_x: torch.Tensor | None = None
        self.test_y: torch.Tensor | None = None
        self.classes: list[str] = []
        self._epoch = 0
        self._train_loader: BatchLoader | None = None

    # ----------------------------------------------------------------------- properties/helpers
    @property
    def num_classes(self) -> int:
        """Number of classes (10 for all shipped data sets); known before setup from the name."""
        return len(self.classes) if self.classes else 10

    @property
    def is_setup(self) -> bool:
        return self.train_x is not None

    @property
    def data_path(self) -> Path:
        """The archive this datamodule reads."""
        return dataset_path(self.name, self.root)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map float images in [0, 1] ((B, 3, H, W) or (3, H, W)) to model input: (x - mean) / std."""
        mean = self.mean.to(device=x01.device, dtype=x01.dtype).view(-1, 1, 1)
        std = self.std.to(device=x01.device, dtype=x01.dtype).view(-1, 1, 1)
        return (x01 - mean) / std

    # ------------------------------------------------------------------------- lightning hooks
    def prepare_data(self) -> None:
        """Make sure the archive exists (download + cache once, on one process)."""
        ensure_dataset_file(self.name, self.root, self.download)

    def setup(self, stage: str | None = None) -> None:
        """Load all splits into memory (idempotent; every stage gets every split)."""
        if self.is_setup:
            return
        data = _load_served(self.name, self.root, self.download)
        n_full = len(data["x_train"])
        if isinstance(self.val_size, (float, np.floating)):
            n_val = int(round(float(self.val_size) * n_full))
        else:
            n_val = int(self.val_size)
        if n_val >= n_full:
            raise DataError(
                f"val_size={self.val_size!r} leaves no training images ({self.name} has {n_full} training images)"
            )
        perm = torch.randperm(n_full, generator=seeded_generator(derive_seed(_SPLIT_STREAM, self.seed)))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        if self.train_subset is not None:
            if self.train_subset > len(train_idx):
                warnings.warn(
                    f"train_subset={self.train_subset} exceeds the {len(train_idx)} training images of "
                    f"{self.name}; using all of them.",
                    stacklevel=2,
                )
            train_idx = train_idx[: self.train_subset]
        if len(train_idx) < self.batch_size:
            raise DataError(
                f"batch_size={self.batch_size} exceeds the {len(train_idx)} training images "
                f"({self.name}, val_size={self.val_size!r}, train_subset={self.train_subset}); with "
                f"drop_last there would be no training batch"
            )
        test_perm = torch.randperm(len(data["x_test"]), generator=seeded_generator(_TEST_ORDER_SEED))
        dev = self.device or torch.device("cpu")
        self.train_x = data["x_train"][train_idx].to(dev)
        self.train_y = data["y_train"][train_idx].to(dev)
        self.val_x = data["x_train"][val_idx].to(dev)
        self.val_y = data["y_train"][val_idx].to(dev)
        self.test_x = data["x_test"][test_perm].to(dev)
        self.test_y = data["y_test"][test_perm].to(dev)
        self.test_index = test_perm  # position of each test image in the file (released CIFAR-10-C order)
        self.classes = list(data["classes"])

    def _distributed(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(getattr(trainer, "global_rank", 0)), int(getattr(trainer, "world_size", 1))

    def _loader(self, x: torch.Tensor, y: torch.Tensor, **kw: Any) -> BatchLoader:
        return BatchLoader(x, y, mean=self.mean, std=self.std, seed=self.seed, device=self.device, **kw)

    def train_dataloader(self) -> BatchLoader:
        """Shuffled, augmented, drop_last loader; its epoch counter continues across calls."""
        if not self.is_setup:
            self.setup("fit")
        rank, world = self._distributed()
        epoch = self._train_loader.epoch if self._train_loader is not None else self._epoch
        self._train_loader = self._loader(
            self.train_x,
            self.train_y,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            epoch=epoch,
            crop_padding=self.crop_padding,
            flip=self.flip,
            rank=rank,
            world_size=world,
        )
        return self._train_loader

    def val_dataloader(self) -> BatchLoader:
        """Validation split in fixed order, no augmentation."""
        if not self.is_setup:
            self.setup("validate")
        return self._loader(self.val_x, self.val_y, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> BatchLoader:
        """Test split in fixed order, no augmentation."""
        if not self.is_setup:
            self.setup("test")
        return self._loader(self.test_x, self.test_y, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> BatchLoader:
        """Same as :meth:`test_dataloader`."""
        return self.test_dataloader()

    # ------------------------------------------------------------------------------ resumability
    @property
    def epoch(self) -> int:
        """The epoch the next training pass will use."""
        return self._train_loader.epoch if self._train_loader is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the next training pass."""
        self._epoch = int(epoch)
        if self._train_loader is not None:
            self._train_loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Saved by Lightning in checkpoints: the training epoch counter (and the seed, for checks)."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training epoch counter written by :meth:`state_dict`."""
        if "seed" in state_dict and int(state_dict["seed"]) != self.seed:
            warnings.warn(
                f"Restoring a data state saved with seed={state_dict['seed']} into a datamodule with "
                f"seed={self.seed}: the data order will differ from the original run.",
                stacklevel=2,
            )
        self.set_epoch(int(state_dict.get("epoch", 0)))
