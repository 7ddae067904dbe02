"""In-memory LightningDataModule serving (N, 3, 32, 32) uint8 image tensors as normalized batches.

The whole data set is held as uint8 tensors (optionally resident on the GPU); batches are cut,
augmented (random crop, then horizontal flip) and normalized on the fly. Instead of
``torch.utils.data.DataLoader`` (workers would only add overhead for in-memory tensors) the loaders
are :class:`BatchLoader` iterables, which Lightning 2.x accepts as train/val/test loaders.

Reproducibility: the training order and augmentation of epoch ``e`` depend only on ``(seed, e)``.
The loader's epoch counter advances by one on every pass, Lightning sets it at the start of each
training epoch (through ``loader.sampler.set_epoch``), and it is saved with
:meth:`ImageDataModule.state_dict`, so a resumed run sees the same data order as an uninterrupted one.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from .augment import random_crop, random_flip
from .npz import DATASET_NAMES, DATASET_STATS, DataError, dataset_path, ensure_dataset_file, load_npz, to_served_format

__all__ = ["BatchLoader", "ImageDataModule", "clear_cache"]

_SPLIT_STREAM = 0x5EED_0001  # seed-sequence tags keep the split and the epoch streams independent
_EPOCH_STREAM = 0x5EED_0002
_TEST_ORDER_SEED = 20240601  # fixed: the test set order is the same for every run seed


def _derive_seed(*words: int) -> int:
    """A 63-bit torch seed derived from non-negative integers (via numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


# ----------------------------------------------------------------------------- process-wide cache
_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2


def clear_cache() -> None:
    """Forget the data sets cached in this process (each entry holds a whole served data set)."""
    with _CACHE_LOCK:
        _CACHE.clear()


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


# ------------------------------------------------------------------------------------ the loader
class _EpochHook:
    """``loader.sampler``: lets Lightning's per-epoch ``sampler.set_epoch(e)`` reach the loader."""

    def __init__(self, loader: BatchLoader) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class BatchLoader:
    """Iterable over in-memory uint8 images that yields ``(x, y)`` batches.

    ``x`` is float32 (B, 3, H, W), normalized with ``mean``/``std`` (pixel/255 scale); ``y`` is
    int64 (B,). With ``shuffle`` the order of pass ``e`` is a permutation drawn from a generator
    seeded by ``(seed, e)``; the same generator then draws the augmentation (crop, then flip, on
    uint8). Each pass uses the current ``epoch`` and then advances it by one; :meth:`set_epoch`
    sets it explicitly. With ``world_size > 1`` each rank takes an equal, disjoint share of each
    shuffled epoch (training only).

    Mid-epoch resumption: :meth:`state_dict` records the epoch of the pass in progress and how
    many batches it has served; Lightning 2.x stores it in checkpoints (fit loop state
    ``combined_loader``). On resume :meth:`load_state_dict` is called on the new train loader (by
    :class:`autonorm.callbacks.resume.TrainLoaderStateCallback`: Lightning's own call comes too late
    when ``configure_optimizers`` has built the loader early). The
    next pass of that same epoch then skips the batches already served: they are still cut and
    augmented (only the normalization is skipped), so the generator makes the same draws and every
    later batch equals the one an uninterrupted run gets. Lightning fetches one batch per step
    (no prefetch when the loader has a length), so batches served = optimizer steps taken in the
    epoch when ``ModelCheckpoint`` saves at the end of a training batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        epoch: int = 0,
        crop_padding: int = 0,
        flip: bool = False,
        device: str | torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.ndim != 4 or x.dtype != torch.uint8:
            raise ValueError(f"x must be a uint8 (N, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}")
        if y.ndim != 1 or len(y) != len(x):
            raise ValueError(f"y must have shape ({len(x)},), got {tuple(y.shape)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed, self.epoch = int(seed), int(epoch)
        self.crop_padding, self.flip = int(crop_padding), bool(flip)
        self.device = torch.device(device) if device is not None else x.device
        self.rank, self.world_size = int(rank), int(world_size)
        self._mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self._std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.sampler = _EpochHook(self)  # Lightning calls sampler.set_epoch(epoch) every epoch
        self.batch_sampler = None  # Lightning inspects this next to .sampler
        self._pass_epoch: int | None = None  # epoch of the pass in progress (or the last one)
        self._served = 0  # batches that pass has yielded so far
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches to skip) from load_state_dict

    @property
    def augment(self) -> bool:
        """Whether batches are augmented (crop and/or flip)."""
        return self.crop_padding > 0 or self.flip

    @property
    def num_samples(self) -> int:
        """Samples served per pass on this rank."""
        n = len(self.x)
        return n // self.world_size if self.world_size > 1 else n

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose order/augmentation the next pass uses."""
        self.epoch = int(epoch)

    def epoch_generator(self, epoch: int) -> torch.Generator:
        """The CPU generator behind pass ``epoch`` (order first, then augmentation draws)."""
        return _generator(_derive_seed(_EPOCH_STREAM, self.seed, epoch))

    def state_dict(self) -> dict[str, Any]:
        """Position in the current pass: ``epoch`` and ``batches`` served (saved by Lightning).

        Before any pass: the next epoch and 0 batches.
        """
        if self._pass_epoch is None:
            epoch, served = self.epoch, 0
        else:
            epoch, served = self._pass_epoch, self._served
        return {
            "epoch": int(epoch),
            "batches": int(served),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a pass saved by :meth:`state_dict`: the next pass of that epoch skips its served batches.

        If the saved loader cut its batches differently (other seed, batch size, sample count or
        shuffling) the served batches cannot be identified: a warning is issued and that epoch is
        served from its start.
        """
        mine = self.state_dict()
        epoch, served = int(state_dict.get("epoch", self.epoch)), int(state_dict.get("batches", 0))
        changed = [k for k in ("seed", "batch_size", "num_samples", "shuffle") if k in state_dict and state_dict[k] != mine[k]]
        if changed and served > 0:
            warnings.warn(
                "Cannot resume the training data mid-epoch: the checkpoint's loader had "
                + ", ".join(f"{k}={state_dict[k]!r}" for k in changed)
                + ", this one has "
                + ", ".join(f"{k}={mine[k]!r}" for k in changed)
                + f"; epoch {epoch} is served again from its first batch.",
                stacklevel=2,
            )
            served = 0
        self.epoch = epoch
        self._resume_at = (epoch, served) if served > 0 else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator function: creating the iterator (e.g. Lightning's iterability check) has no
        # side effects; the epoch is taken and advanced when the first batch is requested.
        epoch = self.epoch
        self.epoch = epoch + 1
        skip = 0
        if self._resume_at is not None:  # only the pass of the saved epoch resumes mid-way
            if self._resume_at[0] == epoch:
                skip = self._resume_at[1]
            self._resume_at = None
        self._pass_epoch, self._served = epoch, skip
        gen = self.epoch_generator(epoch) if (self.shuffle or self.augment) else None
        n = len(self.x)
        order: torch.Tensor | None = None
        if self.shuffle:
            order = torch.randperm(n, generator=gen)
        if self.world_size > 1:
            base = order if order is not None else torch.arange(n)
            order = base[self.rank :: self.world_size][: self.num_samples]
        if order is not None:
            order = order.to(self.x.device)
        bs = self.batch_size
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, self.num_samples)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            xb = xb.to(self.device, non_blocking=True)
            yb = yb.to(self.device, dtype=torch.int64, non_blocking=True)
            if self.crop_padding > 0:
                xb = random_crop(xb, self.crop_padding, gen)
            if self.flip:
                xb = random_flip(xb, gen)
            if b < skip:  # served before the checkpoint: same draws above, not yielded again
                continue
            xf = xb.float().div_(255.0).sub_(self._mean).div_(self._std)
            self._served = b + 1
            yield xf, yb

    def __repr__(self) -> str:
        return (
            f"BatchLoader(n={len(self.x)}, batch_size={self.batch_size}, batches={len(self)}, "
            f"shuffle={self.shuffle}, crop_padding={self.crop_padding}, flip={self.flip}, "
            f"epoch={self.epoch}, device={self.device})"
        )


# -------------------------------------------------------------------------------- the datamodule
def _as_triple(value: Any, arg: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)
    except TypeError:
        vals = (float(value),)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{arg} must be 3 finite floats (one per channel), got {value!r}")
    return vals  # type: ignore[return-value]


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be None, 'auto', 'cpu' or 'cuda[:i]', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available (use None or 'auto')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be None, 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    return dev


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
        if name not in DATASET_NAMES:
            raise ValueError(f"name must be one of {', '.join(DATASET_NAMES)}; got {name!r}")
        for arg, val in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"{arg} must be an integer >= 1, got {val!r}")
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
            raise ValueError(f"val_size must be an int count or a float fraction, got {val_size!r}")
        if isinstance(val_size, (float, np.floating)) and not 0.0 <= float(val_size) < 1.0:
            raise ValueError(f"val_size as a fraction must be in [0, 1), got {val_size!r}")
        if isinstance(val_size, (int, np.integer)) and val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, (int, np.integer)) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer >= 0, got {crop_padding!r}")
        if train_subset is not None and (
            isinstance(train_subset, bool) or not isinstance(train_subset, (int, np.integer)) or train_subset < 1
        ):
            raise ValueError(f"train_subset must be None or an integer >= 1, got {train_subset!r}")
        stats = DATASET_STATS[name]
        mean_t = _as_triple(stats["mean"] if mean is None else mean, "mean")
        std_t = _as_triple(stats["std"] if std is None else std, "std")
        if min(std_t) <= 0:
            raise ValueError(f"std must be > 0 for every channel, got {std_t}")

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
        self.device = _resolve_device(device)
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

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize` (model input back to [0, 1] images)."""
        mean = self.mean.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
        std = self.std.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)
        return x * std + mean

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
        perm = torch.randperm(n_full, generator=_generator(_derive_seed(_SPLIT_STREAM, self.seed)))
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
        test_perm = torch.randperm(len(data["x_test"]), generator=_generator(_TEST_ORDER_SEED))
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
