"""The ``.npz`` data format: reading and validating archives, writing them atomically, the served layout.

File format (the same as ``../shared/data/README.md``): a NumPy ``.npz`` archive holding

* ``x_train`` uint8 (N, H, W, C), ``y_train`` integer (N,), labels 0..num_classes-1,
* ``x_test``  uint8 (M, H, W, C), ``y_test``  integer (M,),
* ``classes`` (optional) unicode strings (num_classes,); without it 10 classes named "0".."9",
* anything else (e.g. ``provenance``) is ignored except ``provenance`` (a string), which is returned.

Full data sets are looked up as ``<root>/<name>.npz`` (:func:`dataset_path`; when missing,
:mod:`autonorm.data.download` fetches them once with torchvision and caches them there). The two
"minis" ship inside the package (``autonorm/data/minis``) and need no root.

The served format (what :func:`to_served_format` returns and the datamodule keeps in memory) is
uint8 tensors (N, 3, 32, 32): 28x28 images (MNIST) are zero-padded by 2 pixels on each side and
grey images are repeated to 3 channels, so a model trained on MNIST transfers to CIFAR-10 unchanged.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autonorm.errors import AutoNormError

__all__ = [
    "DataError",
    "DATASET_NAMES",
    "FULL_DATASETS",
    "MINI_DATASETS",
    "DATASET_STATS",
    "load_npz",
    "write_npz_atomic",
    "dataset_path",
    "to_served_format",
]

FULL_DATASETS: tuple[str, ...] = ("mnist", "cifar10")
MINI_DATASETS: tuple[str, ...] = ("mnist_mini", "cifar10_mini")
DATASET_NAMES: tuple[str, ...] = FULL_DATASETS + MINI_DATASETS

#: Per-channel normalisation constants (on pixel values / 255), for the 3-channel served format.
#: The minis use their parent's statistics so that models move between mini and full data unchanged.
DATASET_STATS: dict[str, dict[str, tuple[float, float, float]]] = {
    "mnist": {"mean": (0.1307,) * 3, "std": (0.3081,) * 3},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)},
}
DATASET_STATS["mnist_mini"] = DATASET_STATS["mnist"]
DATASET_STATS["cifar10_mini"] = DATASET_STATS["cifar10"]

_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_DEFAULT_NUM_CLASSES = 10

FORMAT_HINT = (
    "a NumPy .npz archive with uint8 arrays x_train (N,H,W,C) and x_test (M,H,W,C), C in {1,3}, "
    "H=W=28 or 32, integer label arrays y_train (N,) and y_test (M,) with values 0..9, and a "
    "unicode array classes (see ../shared/data/README.md)"
)


class DataError(AutoNormError, ValueError):
    """Raised when a data set is missing, unreadable, or not in the expected format.

    An :class:`autonorm.config.AutoNormError`: ``train.py`` shows it as one message (exit 2).
    """


# --------------------------------------------------------------------------------------- loading
def _corrupt(path: Path, name: str, err: BaseException) -> DataError:
    return DataError(
        f"The data file {path} for dataset '{name}' is corrupt or truncated and cannot be read "
        f"({type(err).__name__}: {err}). Fix: delete {path} so that it is downloaded/rebuilt again "
        f"on the next run, or point data.root at a folder holding an intact copy of {path.name}."
    )


def load_npz(path: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
    """Load and validate one data archive.

    Returns a dict with numpy arrays ``x_train``, ``y_train`` (int64), ``x_test``, ``y_test`` (int64),
    ``classes`` (list[str]) and ``provenance`` (str or None). Images stay in the stored (N, H, W, C)
    layout; use :func:`to_served_format` for the (N, 3, 32, 32) tensors.

    Raises:
        DataError: the file is missing, corrupt/truncated, lacks an array, or an array has the
            wrong dtype/shape, or labels are out of range. The message names the file and array.
    """
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise DataError(f"Data file {path} for dataset '{name}' does not exist (expected {FORMAT_HINT}).")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # BadZipFile, ValueError (pickled/unknown data), OSError, EOFError ...
        raise _corrupt(path, name, err) from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"Data file {path} for dataset '{name}' holds a single array, not an .npz archive "
            f"(expected {FORMAT_HINT})."
        )
    out: dict[str, Any] = {}
    with archive:
        files = set(archive.files)
        missing = [k for k in _REQUIRED if k not in files]
        if missing:
            raise DataError(
                f"Data file {path} for dataset '{name}' lacks the array(s) {', '.join(missing)} "
                f"(it holds: {', '.join(sorted(files)) or 'nothing'}; expected {FORMAT_HINT})."
            )
        for key in (*_REQUIRED, "classes", "provenance"):
            if key not in files:
                continue
            try:
                out[key] = archive[key]
            except ValueError as err:
                if "pickle" in str(err):
                    raise DataError(
                        f"Data file {path} for dataset '{name}': array '{key}' is stored as Python "
                        f"objects (pickled); store it as a plain numeric/unicode array instead."
                    ) from err
                raise _corrupt(path, name, err) from err
            except Exception as err:  # zlib.error, BadZipFile (bad CRC), EOFError, OSError ...
                raise _corrupt(path, name, err) from err
    return _validate(out, path, name)


def _validate(arrays: dict[str, Any], path: Path, name: str) -> dict[str, Any]:
    where = f"Data file {path} for dataset '{name}'"
    classes_arr = arrays.get("classes")
    if classes_arr is None:
        classes = [str(i) for i in range(_DEFAULT_NUM_CLASSES)]
    else:
        if classes_arr.ndim != 1 or classes_arr.dtype.kind not in "US" or classes_arr.size == 0:
            raise DataError(
                f"{where}: array 'classes' must be a non-empty 1-D array of strings, got dtype "
                f"{classes_arr.dtype} and shape {classes_arr.shape}."
            )
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in classes_arr.tolist()]
    num_classes = len(classes)

    hwc = None
    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        x, y = arrays[xk], arrays[yk]
        if x.dtype != np.uint8:
            raise DataError(
                f"{where}: array '{xk}' has dtype {x.dtype}, expected uint8 pixel values 0..255."
            )
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise DataError(
                f"{where}: array '{xk}' has shape {x.shape}, expected (N, H, W, C) with C = 1 or 3 "
                f"(channels-last)."
            )
        if x.shape[0] == 0:
            raise DataError(f"{where}: array '{xk}' holds no images.")
        if hwc is None:
            hwc = x.shape[1:]
        elif x.shape[1:] != hwc:
            raise DataError(
                f"{where}: array '{xk}' has image shape {x.shape[1:]} but x_train has {hwc}."
            )
        if y.dtype.kind not in "iu":
            raise DataError(f"{where}: array '{yk}' has dtype {y.dtype}, expected an integer dtype.")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{where}: array '{yk}' has shape {y.shape}, expected ({x.shape[0]},) to match "
                f"'{xk}' {x.shape}."
            )
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{where}: array '{yk}' has labels in [{lo}, {hi}], outside the valid range "
                f"[0, {num_classes - 1}] for {num_classes} classes."
            )
        arrays[yk] = y.astype(np.int64, copy=False)
    arrays["classes"] = classes
    prov = arrays.get("provenance")
    arrays["provenance"] = str(prov.item()) if isinstance(prov, np.ndarray) and prov.size == 1 else None
    return arrays


def to_served_format(x: np.ndarray, name: str = "data") -> torch.Tensor:
    """Convert uint8 images (N, H, W, C) to the served uint8 tensor layout (N, 3, 32, 32).

    28x28 images are zero-padded by 2 pixels on every side; 1-channel images are repeated to 3
    channels. Any other image size raises :class:`DataError`.
    """
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
        raise DataError(f"Dataset '{name}': expected uint8 images (N,H,W,C), got {x.dtype} {x.shape}.")
    n, h, w, _ = x.shape
    if (h, w) == (32, 32):
        pad = 0
    elif (h, w) == (28, 28):
        pad = 2
    else:
        raise DataError(
            f"Dataset '{name}': images are {h}x{w}; only 28x28 (MNIST, padded to 32x32) and 32x32 "
            f"are supported."
        )
    src = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (N, C, H, W) view
    if pad == 0 and src.shape[1] == 3:
        return src.contiguous()
    out = torch.zeros((n, 3, 32, 32), dtype=torch.uint8)
    out[:, :, pad : pad + h, pad : pad + w] = src  # broadcasts 1 -> 3 channels
    return out


# --------------------------------------------------------------------------------------- writing
def write_npz_atomic(path: str | os.PathLike[str], compress: bool = True, **arrays: Any) -> Path:
    """Write ``arrays`` as an ``.npz`` archive at ``path`` atomically.

    The archive is written to a temporary file in the same folder and moved into place with
    :func:`os.replace`, so readers never see a half-written file. Entries carry a fixed timestamp,
    so identical arrays give byte-identical files. Readable with ``np.load`` (no pickle).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, mode="w", compression=method, allowZip64=True) as zf:
                for key, value in arrays.items():
                    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = method
                    info.external_attr = 0o644 << 16
                    with zf.open(info, mode="w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


# ----------------------------------------------------------------------------------------- paths
def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise DataError(f"Unknown dataset '{name}'; choose one of: {', '.join(DATASET_NAMES)}.")


def dataset_path(name: str, root: str | os.PathLike[str] = "data") -> Path:
    """Where dataset ``name`` is (or would be cached): the package file for minis, else ``<root>/<name>.npz``."""
    _check_name(name)
    if name in MINI_DATASETS:
        ref = resources.files(__package__).joinpath("minis", f"{name}.npz")
        return Path(str(ref))
    return Path(root).expanduser() / f"{name}.npz"
