"""CIFAR-10-C corruptions: the reference's parameter tables, prefix stability, the frost photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autonorm.eval import CIFAR10C_PARAMS, CORRUPTIONS, make_corrupted_set, make_fixed_sets
from autonorm.eval import corruptions as corruptions_mod

# The tables of the CIFAR-10-C generator (Hendrycks & Dietterich, 2019, "Benchmarking Neural
# Network Robustness to Common Corruptions and Perturbations", make_cifar_c.py), typed out here.
REFERENCE = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [
        (0.0, 0.0, 2.56), (1.6, 6.4, 2.24), (2.56, 1.92, 1.92), (3.2, 1.28, 1.6), (3.2, 0.96, 0.96),
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}
# np.arange(1, stop, 0.01) in the reference: float rounding keeps the stop for 1.06 and 1.11
ZOOM_COUNTS = [7, 12, 16, 21, 26]
ZOOM_LAST = [1.06, 1.11, 1.15, 1.20, 1.25]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_parameter_table_is_the_cifar_generators(name: str) -> None:
    ours = CIFAR10C_PARAMS[name]
    assert len(ours) == 5
    for got, want in zip(ours, REFERENCE[name]):
        assert np.allclose(np.atleast_1d(got), np.atleast_1d(want), rtol=0, atol=1e-9), f"{name}: {ours}"


def test_zoom_blur_factors_include_the_reference_rounding() -> None:
    tables = CIFAR10C_PARAMS["zoom_blur"]
    assert [len(t) for t in tables] == ZOOM_COUNTS
    for t, last in zip(tables, ZOOM_LAST):
        assert t[0] == 1.0 and t[-1] == pytest.approx(last)
        assert np.allclose(np.diff(t), 0.01)
    assert set(CIFAR10C_PARAMS) == set(REFERENCE) | {"zoom_blur"}


def _images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_prefix_stable(name: str) -> None:
    x = _images(7)
    full = make_corrupted_set(x, name, 4, seed=3)
    part = make_corrupted_set(x[:3], name, 4, seed=3)
    assert torch.equal(full[:3], part), f"{name}: image i depends on how many images follow"


def test_fixed_sets_are_prefix_stable() -> None:
    x = _images(6)
    full, part = make_fixed_sets(x, seed=1), make_fixed_sets(x[:2], seed=1)
    for key in ("noise", "rotation"):
        assert torch.equal(full[key][:2], part[key])


def _cifar_mini(n: int) -> torch.Tensor:
    path = Path(corruptions_mod.__file__).resolve().parents[1] / "data" / "minis" / "cifar10_mini.npz"
    with np.load(path) as d:
        return torch.from_numpy(np.ascontiguousarray(d["x_test"][:n])).permute(0, 3, 1, 2).float() / 255


def test_frost_uses_the_photographs_at_the_reference_strength() -> None:
    photos = corruptions_mod.frost_images()
    assert [tuple(p.shape[1:]) for p in photos] == [(120, 180), (63, 112), (63, 112), (70, 105), (99, 132)]
    # on black images the output is f * (a 32x32 crop of one of the photographs), exactly
    gens = [torch.Generator().manual_seed(i) for i in range(6)]
    out = CORRUPTIONS["frost"](torch.zeros(6, 3, 32, 32), 5, gens)
    f = CIFAR10C_PARAMS["frost"][4][1]
    for crop in out / f:
        windows = (p.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4) for p in photos)
        assert any(torch.isclose(w, crop, atol=1e-5).flatten(2).all(-1).any() for w in windows)
    # on CIFAR images the mean pixel change is that of the released frost cells (about 0.12-0.20;
    # the retired synthetic texture reached 0.065-0.097)
    x = _cifar_mini(200)
    change = {}
    for sev in (1, 5):
        gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
        change[sev] = (CORRUPTIONS["frost"](x, sev, gens) - x).abs().mean().item()
    assert 0.1 < change[1] < change[5] < 0.25, change
