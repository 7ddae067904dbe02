"""The in-memory batch loader: uint8 image tensors cut into augmented, normalised batches.

Instead of ``torch.utils.data.DataLoader`` (workers would only add overhead for in-memory tensors)
the loaders are :class:`BatchLoader` iterables, which Lightning 2.x accepts as train/val/test loaders.

Reproducibility: the training order and augmentation of epoch ``e`` depend only on ``(seed, e)``.
The loader's epoch counter advances by one on every pass, Lightning sets it at the start of each
training epoch (through ``loader.sampler.set_epoch``), and it is saved with its ``state_dict``, so
a resumed run sees the same data order as an uninterrupted one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .augment import random_crop, random_flip

__all__ = ["BatchLoader", "derive_seed", "seeded_generator"]

_EPOCH_STREAM = 0x5EED_0002  # seed-sequence tag of the epoch streams (the split's is 0x5EED_0001)


def derive_seed(*words: int) -> int:
    """A 63-bit torch seed derived from non-negative integers (via numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


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
        return seeded_generator(derive_seed(_EPOCH_STREAM, self.seed, epoch))

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
