"""The arguments of :class:`~autonorm.data.ImageDataModule`, checked in one place.

The datamodule calls :func:`check_arguments` when it is built; ``autonorm.config`` calls it on a
run's ``data`` config before anything trains, and names the key as ``data.<key>``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .npz import DATASET_NAMES

__all__ = ["DataArgumentError", "check_arguments", "resolve_device", "as_triple"]


class DataArgumentError(ValueError):
    """One bad argument: ``key`` (e.g. ``batch_size``), what it must be, and the value given."""

    def __init__(self, key: str, must: str, value: Any) -> None:
        self.key, self.must, self.value = key, must, value
        super().__init__(f"{key} {must}, got {value!r}")


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def as_triple(value: Any, key: str) -> tuple[float, float, float]:
    """One number per channel: three finite floats (a single number is repeated)."""
    try:
        vals = tuple(float(v) for v in value)
    except TypeError:
        vals = (float(value),)
    except ValueError:
        raise DataArgumentError(key, "must be 3 finite floats (one per channel)", value) from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise DataArgumentError(key, "must be 3 finite floats (one per channel)", value)
    return vals  # type: ignore[return-value]


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """None (CPU; Lightning moves the batches), ``"auto"`` (CUDA when available), ``cpu`` or ``cuda[:i]``."""
    if device is None:
        return None
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DataArgumentError("device", "must be None, 'auto', 'cpu' or 'cuda[:i]'", device) from None
    if dev.type not in ("cpu", "cuda"):
        raise DataArgumentError("device", "must be None, 'auto', 'cpu' or 'cuda[:i]'", device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DataArgumentError("device", "needs a CUDA GPU and none is visible (use None or 'auto')", device)
    return dev


def check_arguments(
    name: str = "mnist_mini",
    batch_size: Any = 128,
    eval_batch_size: Any = 512,
    val_size: Any = 0.1,
    seed: Any = 0,
    crop_padding: Any = 0,
    train_subset: Any = None,
    mean: Any = None,
    std: Any = None,
    device: Any = None,
) -> None:
    """Raise :class:`DataArgumentError` for the first argument out of its range or of the wrong type."""
    if name not in DATASET_NAMES:
        raise DataArgumentError("name", f"must be one of {', '.join(DATASET_NAMES)}", name)
    for key, val in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not _is_int(val) or val < 1:
            raise DataArgumentError(key, "must be an integer >= 1", val)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DataArgumentError("val_size", "must be an int count or a float fraction", val_size)
    if isinstance(val_size, (float, np.floating)) and not 0.0 <= float(val_size) < 1.0:
        raise DataArgumentError("val_size", "as a fraction must be in [0, 1)", val_size)
    if _is_int(val_size) and val_size < 0:
        raise DataArgumentError("val_size", "must be >= 0", val_size)
    if not _is_int(seed) or seed < 0:
        raise DataArgumentError("seed", "must be an integer >= 0", seed)
    if not _is_int(crop_padding) or crop_padding < 0:
        raise DataArgumentError("crop_padding", "must be an integer >= 0", crop_padding)
    if train_subset is not None and (not _is_int(train_subset) or train_subset < 1):
        raise DataArgumentError("train_subset", "must be None or an integer >= 1", train_subset)
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            triple = as_triple(value, key)
            if key == "std" and min(triple) <= 0:
                raise DataArgumentError("std", "must be > 0 for every channel", triple)
    resolve_device(device)
