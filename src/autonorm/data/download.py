"""Fetching a missing full data set: torchvision download (after a quick reachability probe),
conversion to the ``.npz`` format of :mod:`autonorm.data.npz`, and an atomic cache in the data root.

Every failure becomes one :class:`~autonorm.data.npz.DataError` naming the data root and both
fixes (put the file there, or allow the download).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

from .npz import FORMAT_HINT, MINI_DATASETS, DataError, dataset_path, load_npz, write_npz_atomic

__all__ = ["ensure_dataset_file", "resolve_dataset"]

#: Seconds a network operation of the torchvision download may block before it counts as failed.
NETWORK_TIMEOUT_S = 10.0
#: Seconds allowed for the quick "is the download server reachable" probe before downloading.
PROBE_TIMEOUT_S = 5.0
_MNIST_CLASSES = [str(i) for i in range(10)]


def _missing_message(name: str, root: Path, reason: str) -> str:
    root_abs = root.resolve() if root.exists() else root.absolute()
    return (
        f"Dataset '{name}' is not available: {root_abs / (name + '.npz')} does not exist and "
        f"{reason}. Fix it in one of two ways: (1) put {name}.npz into the data root {root_abs} "
        f"({FORMAT_HINT}), e.g. copy it from ../shared/data/{name}.npz, or point data.root "
        f"(paths.data_root / env AUTONORM_DATA_ROOT) at a folder that holds it; or (2) run once with "
        f"network access and data.download=true so torchvision can download {name} into {root_abs} "
        f"and the converted {name}.npz is cached there."
    )


def _probe(url: str, timeout: float) -> None:
    """Raise OSError unless a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Runs in a daemon thread so a hanging DNS lookup cannot block longer than ``timeout``.
    """
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: dict[str, BaseException | None] = {"err": OSError(f"no answer from {host} in {timeout:.0f} s")}

    def target() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["err"] = None
        except BaseException as err:  # noqa: BLE001 - reported to the caller
            result["err"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if result["err"] is not None:
        raise OSError(f"cannot reach {host}:{port} ({result['err']})")


def _torchvision_arrays(name: str, root: Path, download: bool) -> dict[str, Any]:
    """Read ``name`` with torchvision (downloading into ``root`` if allowed) as npz-format arrays."""
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.CIFAR10

    def build(dl: bool) -> tuple[Any, Any]:
        return cls(str(root), train=True, download=dl), cls(str(root), train=False, download=dl)

    try:  # already downloaded raw files need no network
        train, test = build(False)
    except (RuntimeError, OSError):
        if not download:
            raise
        urls = list(getattr(cls, "mirrors", [])) or [cls.url]
        errors = []
        for url in urls:
            try:
                _probe(url, PROBE_TIMEOUT_S)
                break
            except OSError as err:
                errors.append(str(err))
        else:
            raise OSError("; ".join(errors))
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(NETWORK_TIMEOUT_S)
        try:
            train, test = build(True)
        finally:
            socket.setdefaulttimeout(old)

    def images(ds: Any) -> np.ndarray:
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        return np.ascontiguousarray(data[..., None] if data.ndim == 3 else data, dtype=np.uint8)

    def labels(ds: Any) -> np.ndarray:
        t = ds.targets
        return (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)).astype(np.int64)

    classes = _MNIST_CLASSES if name == "mnist" else [str(c) for c in train.classes]
    return {
        "x_train": images(train),
        "y_train": labels(train),
        "x_test": images(test),
        "y_test": labels(test),
        "classes": np.array(classes),
        "provenance": np.array(f"torchvision.datasets.{cls.__name__} (downloaded into {root})"),
    }


def ensure_dataset_file(name: str, root: str | os.PathLike[str] = "data", download: bool = True) -> Path:
    """Make sure the archive for ``name`` exists and return its path (no validation of its content).

    Minis are always present. For full sets, a missing ``<root>/<name>.npz`` is built with
    torchvision (downloading when ``download`` is true) and written atomically. Raises
    :class:`DataError` (naming the root and both fixes) when that is impossible.
    """
    path = dataset_path(name, root)
    if name in MINI_DATASETS:
        if not path.is_file():
            raise DataError(
                f"The packaged mini dataset {path} is missing; reinstall autonorm or rebuild it with "
                f"`python scripts/make_minis.py`."
            )
        return path
    if path.is_file():
        return path
    root_p = Path(root).expanduser()
    try:
        root_p.mkdir(parents=True, exist_ok=True)
        if not os.access(root_p, os.W_OK | os.X_OK):
            raise PermissionError(f"no write permission for {root_p}")
    except OSError as err:
        raise DataError(_missing_message(name, root_p, f"the data root is not writable ({err})")) from err
    try:
        arrays = _torchvision_arrays(name, root_p, download)
    except Exception as err:  # noqa: BLE001 - any failure becomes one actionable message
        reason = (
            f"downloading is disabled (data.download=false) and torchvision finds no raw files ({err})"
            if not download
            else f"the torchvision download failed ({type(err).__name__}: {err})"
        )
        raise DataError(_missing_message(name, root_p, reason)) from err
    try:
        write_npz_atomic(path, **arrays)
    except OSError as err:
        raise DataError(_missing_message(name, root_p, f"writing the cache failed ({err})")) from err
    return path


def resolve_dataset(name: str, root: str | os.PathLike[str] = "data", download: bool = True) -> dict[str, Any]:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`) as validated numpy arrays.

    Minis come from the package and ignore ``root``. Full sets are read from ``<root>/<name>.npz``;
    when absent they are fetched with torchvision and cached there (see :func:`ensure_dataset_file`).
    Returns the dict of :func:`load_npz`.
    """
    path = ensure_dataset_file(name, root, download)
    return load_npz(path, name)
