"""Robustness evaluation: fixed noise / rotation test sets, CIFAR-10-C accuracy and mCE.

Protocol
--------
* Every method is scored on the *very same* perturbed images, and every perturbation is
  prefix-stable: image i of the test set is perturbed with a generator of its own, seeded by
  ``seed``, a tag naming the perturbation (and corruption and severity) and i. So the sets depend
  on the images and the seed and nothing else (not on the model, the batch size, the device or
  how many images are evaluated: the first N images of a capped evaluation are perturbed exactly
  as in the full one).
* CIFAR-10-C (Hendrycks & Dietterich, 2019, "Benchmarking Neural Network Robustness to Common
  Corruptions and Perturbations"): for a model evaluated on CIFAR-10 (``dataset="cifar10"``),
  if ``cifar10c_dir`` holds the released files ``<corruption>.npy`` (50000, 32, 32, 3) uint8
  (severities 1..5 stacked, 10000 each, in the CIFAR-10 test file's order) and ``labels.npy``,
  they are used, indexed like the clean set (``test_index``: position of each evaluated image in
  the test file), and their labels are checked against the clean set's. For any other data set,
  and for missing files, the corruption is generated on the fly from the given test images with
  :mod:`autonorm.eval.corruptions`. The source of each corruption is reported (``"npy"`` or
  ``"generated"``). The released files corrupt the original CIFAR-10 test images: with a
  ``cifar10.npz`` that is a re-encoded copy, the clean images differ slightly from theirs.
* A corruption that cannot be produced or scored gives a warning and ``None`` cells, never a
  number.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .corruptions import CIFAR10C_CORRUPTIONS, CORRUPTIONS, gaussian_noise, rotate

__all__ = [
    "GEN_CHUNK",
    "accuracy",
    "corruption_errors",
    "errors_from_accuracies",
    "evaluate_robustness",
    "make_corrupted_set",
    "make_fixed_sets",
    "mce",
]

#: images per generation chunk (the images' values do not depend on it: one generator per image)
GEN_CHUNK = 500

#: the data set whose test images the released CIFAR-10-C files corrupt
CIFAR10C_DATASET = "cifar10"

Normalize = Callable[[torch.Tensor], torch.Tensor]
Cell = Optional[float]


def _derive_seed(seed: int, *tags: object) -> int:
    """A stable 63-bit seed from ``seed`` and tags (crc32, independent of PYTHONHASHSEED)."""
    h = int(seed) & 0xFFFFFFFF
    for tag in tags:
        h = (h * 1_000_003 + zlib.crc32(str(tag).encode())) % (2**63 - 1)
    return h


def _to_uint8(x01: torch.Tensor) -> torch.Tensor:
    return torch.round(x01.clamp(0, 1) * 255.0).to(torch.uint8)


def _to_float01(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float().div(255.0)
    return x.float()


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected images (N, 3, H, W), got {shape}")


def _generate(
    x_uint8: torch.Tensor, fn: Callable[[torch.Tensor, list[torch.Generator]], torch.Tensor], seed: int
) -> torch.Tensor:
    """Apply ``fn(x01_chunk, generators)`` chunk by chunk (CPU) and return uint8 images.

    Image i gets its own generator seeded by ``(seed, i)``: its perturbation depends on nothing
    else (prefix-stable)."""
    out = []
    for i in range(0, x_uint8.shape[0], GEN_CHUNK):
        chunk = _to_float01(x_uint8[i : i + GEN_CHUNK].cpu())
        gens = [torch.Generator(device="cpu").manual_seed(_derive_seed(seed, j)) for j in range(i, i + chunk.shape[0])]
        out.append(_to_uint8(fn(chunk, gens)))
    if not out:
        return x_uint8.new_empty(x_uint8.shape, dtype=torch.uint8).cpu()
    return torch.cat(out)


def make_fixed_sets(
    x_uint8: torch.Tensor, seed: int = 0, sigma: float = 0.2, max_deg: float = 30.0
) -> dict[str, torch.Tensor]:
    """The fixed perturbed test sets, identical for every call with the same images and seed.

    Args:
        x_uint8: test images (N, 3, H, W) uint8 (float [0, 1] also accepted).
        seed: seed of the perturbations.
        sigma: std of the additive Gaussian noise in [0, 1] pixel space (then clamp).
        max_deg: rotation angles are uniform in [-max_deg, max_deg] per image.

    Returns:
        ``{"noise": uint8 (N, 3, H, W), "rotation": uint8 (N, 3, H, W)}`` on the CPU (rounded to
        the uint8 grid, like any stored test set).
    """
    _check_images(x_uint8)
    return {
        "noise": _generate(x_uint8, lambda x, g: gaussian_noise(x, sigma, g), _derive_seed(seed, "noise")),
        "rotation": _generate(x_uint8, lambda x, g: rotate(x, max_deg, g), _derive_seed(seed, "rotation")),
    }


def make_corrupted_set(x_uint8: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """The on-the-fly CIFAR-10-C set for one corruption and severity, uint8 (N, 3, H, W) on CPU.

    Deterministic in (images, name, severity, seed): this is exactly the set
    :func:`evaluate_robustness` scores when no released ``.npy`` file is used, so it can be
    cached and shared between methods. May raise :class:`CorruptionUnavailable`.
    """
    _check_images(x_uint8)
    if name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    fn = CORRUPTIONS[name]
    sev = int(severity)
    return _generate(x_uint8.cpu(), lambda x, g: fn(x, sev, g), _derive_seed(seed, "cifar10c", name, sev))


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    normalize: Normalize,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
) -> float:
    """Top-1 accuracy (fraction) of ``model`` on images ``x`` (uint8 or float [0, 1]).

    Each batch is converted to [0, 1], passed through ``normalize`` on the CPU, moved to
    ``device`` (default: the model's) and classified in eval mode; the model's train/eval mode
    is restored afterwards.
    """
    _check_images(x)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError("no images to evaluate")
    dev = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, x.shape[0], int(batch_size)):
            xb = normalize(_to_float01(x[i : i + batch_size].cpu())).to(dev)
            pred = model(xb).argmax(dim=-1).cpu()
            correct += int((pred == y[i : i + batch_size].cpu().long()).sum())
    finally:
        model.train(was_training)
    return correct / x.shape[0]


def _load_cifar10c(
    cifar10c_dir: Optional[str], name: str, severity: int, index: torch.Tensor, y: torch.Tensor
) -> Optional[torch.Tensor]:
    """Released CIFAR-10-C images (n, 3, 32, 32) uint8 of one cell at the test-file positions
    ``index`` (those of the clean set), or None if the files are absent. Raises ValueError when
    the files' labels at those positions are not the clean set's ``y`` (a different order)."""
    if not cifar10c_dir:
        return None
    path = os.path.join(cifar10c_dir, f"{name}.npy")
    lpath = os.path.join(cifar10c_dir, "labels.npy")
    if not (os.path.isfile(path) and os.path.isfile(lpath)):
        return None
    data = np.load(path, mmap_mode="r")
    labels = np.load(lpath, mmap_mode="r")
    if data.ndim != 4 or data.shape[-1] != 3 or data.shape[0] % 5 != 0 or labels.shape[0] != data.shape[0]:
        raise ValueError(
            f"{path}: expected (5 * N, H, W, 3) images with matching labels.npy, "
            f"got {data.shape} and {labels.shape}"
        )
    per = data.shape[0] // 5
    idx = np.asarray(index.cpu().numpy(), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= per):
        raise ValueError(f"{path}: test positions up to {idx.max()} but {per} images per severity")
    rows = (severity - 1) * per + idx
    if not np.array_equal(np.asarray(labels[rows], dtype=np.int64), y.cpu().numpy().astype(np.int64)):
        raise ValueError(f"{path}: labels at the clean set's positions differ from the clean labels")
    return torch.from_numpy(np.array(data[rows], dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()


def _mean(values: Sequence[Cell]) -> Cell:
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))  # type: ignore[arg-type]


def evaluate_robustness(
    model: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    normalize: Normalize,
    sigma: float = 0.2,
    max_deg: float = 30.0,
    seed: int = 0,
    batch_size: int = 256,
    cifar10c: bool = False,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    cifar10c_dir: Optional[str] = None,
    max_images: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    corruptions: Optional[Sequence[str]] = None,
    dataset: Optional[str] = None,
    test_index: Optional[torch.Tensor] = None,
) -> dict:
    """Clean, noise, rotation (and optionally CIFAR-10-C) accuracy of ``model``.

    Args:
        model: classifier taking normalized float images; put in eval mode (and restored).
        x_uint8, y: test images (N, 3, 32, 32) uint8 and labels (N,).
        normalize: maps float [0, 1] images to model input (e.g. ``datamodule.normalize``).
        sigma, max_deg, seed: parameters of :func:`make_fixed_sets`.
        batch_size: evaluation batch size (results do not depend on it).
        cifar10c: also evaluate the 15 CIFAR-10-C corruptions at ``severities``.
        cifar10c_dir: folder with the released ``<corruption>.npy`` + ``labels.npy``, used only
            when ``dataset == "cifar10"``; otherwise (and for missing files) the corruptions are
            generated on the fly from ``x_uint8`` / ``y``.
        max_images: use only the first ``max_images`` test images (the released files at the
            same test positions); None = all.
        dataset: name of the data set the images come from (``data.name``).
        test_index: position of each of ``x_uint8``'s images in the test file (the order of the
            released files); default ``0 .. N-1``.
        device: where the model runs (default: where its parameters are). The model is *moved*
            there if given.
        corruptions: subset of CIFAR-10-C corruption names (default: all 15).

    Returns:
        A JSON-serialisable dict::

            {"clean_acc", "noise_acc", "rotation_acc": float,
             "n_images": int, "seed": int, "sigma": float, "max_deg": float,
             # only with cifar10c=True:
             "cifar10c": {corruption: {"1": acc | None, ..., "5": ...}},   # str severity keys
             "cifar10c_mean": {corruption: mean over severities | None},
             "c_mean_acc": mean over all cells | None (None unless every cell was scored),
             "cifar10c_source": {corruption: "npy" | "generated" | "unavailable"},
             "cifar10c_missing": [corruption, ...]}   # rows with at least one None cell

        ``cifar10c_mean`` is None for a corruption with any missing severity, and ``c_mean_acc`` is
        None when any corruption is (an average over a subset would not compare with others').
    """
    _check_images(x_uint8)
    if x_uint8.shape[0] != y.shape[0]:
        raise ValueError(f"{x_uint8.shape[0]} images but {y.shape[0]} labels")
    if test_index is None:
        test_index = torch.arange(x_uint8.shape[0])
    if test_index.shape[0] != x_uint8.shape[0]:
        raise ValueError(f"{x_uint8.shape[0]} images but {test_index.shape[0]} test positions")
    if max_images is not None:
        x_uint8, y, test_index = x_uint8[: int(max_images)], y[: int(max_images)], test_index[: int(max_images)]
    x_uint8 = x_uint8.cpu()
    if x_uint8.dtype != torch.uint8:
        x_uint8 = _to_uint8(x_uint8.float())
    y = y.cpu().long()
    if device is not None:
        model.to(device)

    def acc(x: torch.Tensor, labels: torch.Tensor) -> float:
        return accuracy(model, x, labels, normalize, batch_size, device)

    fixed = make_fixed_sets(x_uint8, seed=seed, sigma=sigma, max_deg=max_deg)
    result: dict = {
        "n_images": int(x_uint8.shape[0]),
        "seed": int(seed),
        "sigma": float(sigma),
        "max_deg": float(max_deg),
        "clean_acc": acc(x_uint8, y),
        "noise_acc": acc(fixed["noise"], y),
        "rotation_acc": acc(fixed["rotation"], y),
    }
    if not cifar10c:
        return result

    names = list(corruptions) if corruptions is not None else list(CIFAR10C_CORRUPTIONS)
    released_dir = cifar10c_dir if dataset == CIFAR10C_DATASET else None
    table: dict[str, dict[str, Cell]] = {}
    source: dict[str, str] = {}
    for name in names:
        row: dict[str, Cell] = {}
        used: list[str] = []
        for sev in severities:
            sev = int(sev)
            cell: Cell = None
            try:
                if name not in CORRUPTIONS:
                    raise KeyError(f"unknown corruption {name!r}")
                real = _load_cifar10c(released_dir, name, sev, test_index, y)
                if real is not None:
                    cell = acc(real, y)
                    used.append("npy")
                else:
                    cell = acc(make_corrupted_set(x_uint8, name, sev, seed), y)
                    used.append("generated")
            except Exception as exc:  # noqa: BLE001 - any failure becomes an empty cell
                warnings.warn(
                    f"CIFAR-10-C {name} severity {sev} unavailable ({type(exc).__name__}: {exc}); "
                    "reporting None",
                    RuntimeWarning,
                    stacklevel=2,
                )
                cell = None
            row[str(sev)] = cell
        table[name] = row
        kinds = list(dict.fromkeys(used))
        source[name] = "+".join(kinds) if kinds else "unavailable"
    means = {name: _mean(list(row.values())) for name, row in table.items()}
    complete = [m for m in means.values() if m is not None]
    result.update(
        {
            "cifar10c": table,
            "cifar10c_mean": means,
            "c_mean_acc": float(sum(complete) / len(complete)) if complete and len(complete) == len(means) else None,
            "cifar10c_source": source,
            "cifar10c_missing": [name for name, m in means.items() if m is None],
        }
    )
    return result


# --------------------------------------------------------------------------------------------
# mCE
# --------------------------------------------------------------------------------------------

CellsByCorruption = Mapping[str, Union[Mapping[Union[int, str], Cell], Sequence[Cell]]]


def _cells(row: Union[Mapping[Union[int, str], Cell], Sequence[Cell]]) -> dict[int, Cell]:
    """Normalise one corruption's cells to {severity (int): value}."""
    if isinstance(row, Mapping):
        return {int(k): (None if v is None else float(v)) for k, v in row.items()}
    return {i + 1: (None if v is None else float(v)) for i, v in enumerate(row)}


def errors_from_accuracies(acc_by_corruption: CellsByCorruption) -> dict[str, dict[str, Cell]]:
    """Turn ``result["cifar10c"]`` accuracies into errors ``1 - acc`` (None stays None)."""
    return {
        name: {str(s): (None if a is None else 1.0 - a) for s, a in _cells(row).items()}
        for name, row in acc_by_corruption.items()
    }


def corruption_errors(
    errors_by_corruption: CellsByCorruption, baseline_errors_by_corruption: CellsByCorruption
) -> dict[str, Cell]:
    """Per-corruption relative error ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}``.

    Each argument maps corruption -> errors per severity, either a sequence (severity 1 first) or
    a mapping severity (int or str) -> error. ``CE_c`` is None when the corruption is missing
    from either side, when any of its cells is None, when the two sides cover different
    severities, or when the baseline's summed error is 0.
    """
    out: dict[str, Cell] = {}
    for name in list(dict.fromkeys([*errors_by_corruption, *baseline_errors_by_corruption])):
        if name not in errors_by_corruption or name not in baseline_errors_by_corruption:
            out[name] = None
            continue
        e, b = _cells(errors_by_corruption[name]), _cells(baseline_errors_by_corruption[name])
        if not e or set(e) != set(b) or any(v is None for v in [*e.values(), *b.values()]):
            out[name] = None
            continue
        den = sum(b.values())  # type: ignore[arg-type]
        out[name] = None if den <= 0 else float(sum(e.values()) / den)  # type: ignore[arg-type]
    return out


def mce(errors_by_corruption: CellsByCorruption, baseline_errors_by_corruption: CellsByCorruption) -> Cell:
    """Mean Corruption Error relative to a baseline (Hendrycks & Dietterich, 2019).

    ``mCE = mean_c CE_c`` with ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}`` (errors, not
    accuracies: use :func:`errors_from_accuracies`), the baseline being the LayerNorm ViT. Here
    mCE is a ratio (1.0 = as robust as the baseline), not a percentage. Both sides must have the
    same complete cells: if any corruption's CE is None (see :func:`corruption_errors`), mCE is
    None and a warning names the missing corruptions (an average over a subset is not an mCE).
    """
    ces = corruption_errors(errors_by_corruption, baseline_errors_by_corruption)
    missing = [name for name, v in ces.items() if v is None]
    valid = [v for v in ces.values() if v is not None]
    if missing or not valid:
        warnings.warn(f"mCE: no corruption error for {missing or 'any corruption'}; mCE left empty", RuntimeWarning, stacklevel=2)
        return None
    value = float(sum(valid) / len(valid))
    return value if math.isfinite(value) else None
