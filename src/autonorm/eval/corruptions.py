"""Image corruptions for robustness evaluation, implemented on the fly in torch.

Two families live here:

* the two fixed perturbations of the AutoNorm protocol, :func:`gaussian_noise` (additive noise of
  standard deviation ``sigma`` in [0, 1] pixel space) and :func:`rotate` (a uniform random angle
  in ``[-max_deg, max_deg]`` per image);
* the 15 corruptions x 5 severities of CIFAR-10-C (Hendrycks & Dietterich, 2019, "Benchmarking
  Neural Network Robustness to Common Corruptions and Perturbations"), reimplemented in torch
  with the parameter tables of the authors' CIFAR (32x32) generator, not the ImageNet-C or
  Tiny-ImageNet-C ones. They are registered in :data:`CORRUPTIONS` (name ->
  ``fn(x01, severity, generator)``) and the parameters are listed in :data:`CIFAR10C_PARAMS`
  (pinned by a test).

Conventions: every corruption takes float images in [0, 1] of shape (B, 3, H, W) (CIFAR: 32x32)
and returns the same shape and dtype, clamped to [0, 1]. Randomness comes from ``generator``:
either one ``torch.Generator`` for the batch, or a sequence of B generators, one per image, in
which case image i's corruption depends on its own generator alone (not on the batch size or the
other images: what :mod:`autonorm.eval.robustness` uses, so that the first N images of a set are
corrupted the same whatever N). ``generator=None`` uses torch's global RNG.

Fidelity notes (where this differs from the released numpy/OpenCV/ImageMagick generator):

* The reference works on uint8 PIL images with scikit-image, OpenCV, SciPy and Wand
  (ImageMagick). Here every step is in float32 torch; quantisation to uint8 is reproduced where it
  matters (glass blur's pixel shuffling, pixelate's two PIL resizes, JPEG, motion blur's PNG).
* ``motion_blur`` (and the motion-blurred snow layer) use a re-implementation of ImageMagick's
  motion blur (a one-sided Gaussian kernel of width ``2 * radius + 1`` along the motion
  direction, edge-replicated shifts), not Wand itself.
* ``zoom_blur`` and ``snow`` zoom bilinearly about the image centre in place of
  ``scipy.ndimage.zoom`` on an integer centre crop (sub-pixel differences in the zoom centre).
  The zoom factors are the reference's ``np.arange(1, stop, 0.01)`` arrays including their float
  rounding (7, 12, 16, 21 and 26 factors).
* ``frost`` blends a random 32x32 crop of one of the five frost photographs the CIFAR generator
  draws from (``frost1.png`` ... ``frost5.jpg``, shrunk by 0.2), shipped in
  ``autonorm/eval/assets/frost_cifar.npz`` (built from the PyPI package ``imagecorruptions`` by
  ``scripts/make_frost.py``, which records the files' sha256).
* ``glass_blur`` reproduces what the reference's pixel "swap" really does: on numpy views of an
  (H, W, 3) array ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` only copies ``x[h', w']`` into
  ``x[h, w]``. ``jpeg_compression`` uses Pillow like the reference (torchvision as fallback).

Since the random numbers come from torch, not numpy, no generated image equals the released
CIFAR-10-C file's image; the distributions and parameters are the reference's. Released
``.npy`` files are preferred for the CIFAR-10 test set (:mod:`autonorm.eval.robustness`).

A corruption that cannot be built raises :class:`CorruptionUnavailable`; evaluation code turns
that into a warning and an empty (None) cell, never a number.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10C_CORRUPTIONS",
    "CIFAR10C_PARAMS",
    "CORRUPTIONS",
    "CorruptionUnavailable",
    "corrupt",
    "gaussian_noise",
    "rotate",
]

#: one generator for the batch, or one per image (see the module docstring)
Generator = Union[None, torch.Generator, Sequence[torch.Generator]]
CorruptionFn = Callable[[torch.Tensor, int, Generator], torch.Tensor]


class CorruptionUnavailable(RuntimeError):
    """Raised when a corruption cannot be generated (e.g. a missing external resource)."""


# The CIFAR-10-C parameter tables, severities 1..5: the values of the authors' CIFAR generator
# (``make_cifar_c.py`` of Hendrycks & Dietterich's robustness code), pinned by a test.
CIFAR10C_PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],  # std in [0, 1]
    "shot_noise": [500, 250, 100, 75, 50],  # Poisson photon count scale
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],  # salt & pepper amount
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],  # (radius, alias blur)
    # (sigma, max_delta, iterations)
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],  # (radius, sigma)
    # np.arange(1, stop, 0.01) as the reference builds them: float rounding gives 7 and 12
    # factors for the first two stops (1.06 and 1.11 are included), 16, 21 and 26 for the others
    "zoom_blur": [[float(z) for z in np.arange(1, stop, 0.01)] for stop in (1.06, 1.11, 1.16, 1.21, 1.26)],
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],  # (image, frost photo) weights
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],  # (strength, wibble decay)
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],  # added to HSV value
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],  # contrast factor
    # (alpha, sigma, affine jitter) in pixels, 32 * fractions
    "elastic_transform": [
        (32 * 0.0, 32 * 0.0, 32 * 0.08),
        (32 * 0.05, 32 * 0.2, 32 * 0.07),
        (32 * 0.08, 32 * 0.06, 32 * 0.06),
        (32 * 0.1, 32 * 0.04, 32 * 0.05),
        (32 * 0.1, 32 * 0.03, 32 * 0.03),
    ],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],  # downscale factor
    "jpeg_compression": [80, 65, 58, 50, 40],  # JPEG quality
}

CIFAR10C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check(x01: torch.Tensor) -> None:
    if not isinstance(x01, torch.Tensor) or x01.dim() != 4 or x01.shape[1] != 3:
        shape = tuple(x01.shape) if isinstance(x01, torch.Tensor) else type(x01).__name__
        raise ValueError(f"expected float images (B, 3, H, W) in [0, 1], got {shape}")
    if not x01.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor in [0, 1], got dtype {x01.dtype}")


def _severity(name: str, severity: int):
    if int(severity) != severity or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return CIFAR10C_PARAMS[name][int(severity) - 1]


def _gdev(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _draw(shape: Sequence[int], generator: Generator, sample: Callable) -> torch.Tensor:
    """``sample(shape, gen)`` for one generator; with one generator per image (a sequence of
    ``shape[0]``), image i's values are ``sample(shape[1:], generator[i])``, stacked."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} images")
        if not generator:
            return torch.empty(shape)
        return torch.stack([sample(shape[1:], g).cpu() for g in generator])
    return sample(shape, generator)


def _rand(shape: Sequence[int], generator: Generator, device) -> torch.Tensor:
    return _draw(shape, generator, lambda s, g: torch.rand(s, generator=g, device=_gdev(g))).to(device)


def _randn(shape: Sequence[int], generator: Generator, device) -> torch.Tensor:
    return _draw(shape, generator, lambda s, g: torch.randn(s, generator=g, device=_gdev(g))).to(device)


def _randint(lo: int, hi: int, shape: Sequence[int], generator: Generator, device) -> torch.Tensor:
    return _draw(shape, generator, lambda s, g: torch.randint(lo, hi, s, generator=g, device=_gdev(g))).to(device)


def _uniform(shape: Sequence[int], lo: float, hi: float, generator: Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(shape, generator, device)


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return out.clamp(0.0, 1.0).to(like.dtype)


def _pad_index(n: int, pad: int, mode: str, device) -> torch.Tensor:
    """Source indices for positions -pad .. n-1+pad under a border mode.

    ``symmetric``: half-sample symmetric (SciPy/scikit-image "reflect", numpy "symmetric");
    ``reflect101``: whole-sample symmetric (OpenCV default, torch "reflect");
    ``nearest``: replicate the edge.
    """
    i = torch.arange(-pad, n + pad, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "symmetric":
        period = 2 * n
        j = i.remainder(period)
        return torch.where(j >= n, period - 1 - j, j)
    if mode == "reflect101":
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * n - 2
        j = i.remainder(period)
        return torch.where(j >= n, period - j, j)
    raise ValueError(f"unknown border mode {mode!r}")


def _pad2d(x: torch.Tensor, pad_h: int, pad_w: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``x`` with index-based border handling (one gather)."""
    h, w = x.shape[-2:]
    ih = _pad_index(h, pad_h, mode, x.device)
    iw = _pad_index(w, pad_w, mode, x.device)
    return x[..., ih[:, None], iw[None, :]]


def _gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0, mode: str = "nearest") -> torch.Tensor:
    """Separable Gaussian blur of the last two dims, like ``scipy.ndimage.gaussian_filter``.

    Radius ``int(truncate * sigma + 0.5)`` (SciPy's rule); ``sigma == 0`` or radius 0 is the
    identity.
    """
    radius = int(truncate * float(sigma) + 0.5)
    if sigma <= 0 or radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    k = (k / k.sum()).to(x.dtype)
    shape = x.shape
    y = x.reshape(-1, 1, shape[-2], shape[-1])
    y = _pad2d(y, radius, radius, mode)
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    return y.reshape(shape)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "reflect101") -> torch.Tensor:
    """Correlate every channel of ``x`` (B, C, H, W) with a 2D ``kernel`` (like cv2.filter2D)."""
    kh, kw = kernel.shape
    b, c, h, w = x.shape
    y = _pad2d(x.reshape(b * c, 1, h, w), kh // 2, kw // 2, mode)
    y = F.conv2d(y, kernel.to(x.dtype).view(1, 1, kh, kw))
    return y.reshape(b, c, h, w)


def _to_norm(coord: torch.Tensor, size: int, align_corners: bool) -> torch.Tensor:
    """Pixel coordinates (centres at integers) -> grid_sample's [-1, 1] coordinates."""
    if align_corners:
        return 2.0 * coord / max(size - 1, 1) - 1.0
    return (2.0 * coord + 1.0) / size - 1.0


def _sample(img: torch.Tensor, px: torch.Tensor, py: torch.Tensor, border: str) -> torch.Tensor:
    """Bilinear sampling of ``img`` (B, C, H, W) at pixel coordinates ``px``, ``py`` (B, H', W').

    ``border``: "reflect101" (OpenCV BORDER_REFLECT_101), "symmetric" (SciPy "reflect"),
    "nearest" (edge replicate) or "zeros".
    """
    h, w = img.shape[-2:]
    if border == "reflect101":
        align, pmode = True, "reflection"
    elif border == "symmetric":
        align, pmode = False, "reflection"
    elif border == "nearest":
        align, pmode = True, "border"
    elif border == "zeros":
        align, pmode = False, "zeros"
    else:
        raise ValueError(f"unknown border {border!r}")
    grid = torch.stack([_to_norm(px, w, align), _to_norm(py, h, align)], dim=-1).to(img.dtype)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode=pmode, align_corners=align)


def _pixel_grid(b: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device),
        torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return xs.expand(b, h, w), ys.expand(b, h, w)


def _zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom in by ``factor`` (>= 1) about the image centre, keeping the size (bilinear)."""
    if factor == 1:
        return x
    b, _, h, w = x.shape
    xs, ys = _pixel_grid(b, h, w, x.device)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return _sample(x, (xs - cx) / factor + cx, (ys - cy) / factor + cy, "nearest")


def _quantize(x01: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid (as a PIL round trip does), staying float."""
    return torch.round(x01.clamp(0, 1) * 255.0) / 255.0


def _motion_blur(x: torch.Tensor, radius: int, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """One-sided Gaussian motion blur along a per-image angle (ImageMagick-style, see module doc)."""
    b, c, h, w = x.shape
    width = 2 * int(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    kernel = torch.exp(-(i**2) / (2 * float(sigma) ** 2)) / (math.sqrt(2 * math.pi) * float(sigma))
    kernel = kernel / kernel.sum()
    rad = torch.deg2rad(angles_deg.double().cpu())
    sin, cos = torch.sin(rad), torch.cos(rad)  # point / hypot
    yy = torch.arange(h, device=x.device).view(1, h, 1)
    xx = torch.arange(w, device=x.device).view(1, 1, w)
    flat = x.reshape(b, c, h * w)
    out = torch.zeros_like(flat)
    alive = torch.ones(b, dtype=torch.bool)
    for k in range(width):
        dy = -torch.ceil(k * sin - 0.5).long()
        dx = -torch.ceil(k * cos - 0.5).long()
        # the reference stops adding shifts once the motion leaves the image
        alive &= (dy.abs() < h) & (dx.abs() < w)
        if not bool(alive.any()):
            break
        src_y = (yy - dy.to(x.device).view(b, 1, 1)).clamp(0, h - 1)
        src_x = (xx - dx.to(x.device).view(b, 1, 1)).clamp(0, w - 1)
        idx = (src_y * w + src_x).reshape(b, 1, h * w).expand(b, c, h * w)
        weight = (kernel[k] * alive.double()).to(x.dtype).to(x.device).view(b, 1, 1)
        out = out + weight * flat.gather(2, idx)
    return out.reshape(b, c, h, w)


def _plasma_fractal(b: int, mapsize: int, wibbledecay: float, generator: Generator, device) -> torch.Tensor:
    """Diamond-square plasma fractal (B, mapsize, mapsize) in [0, 1], as in the ImageNet-C code."""
    if mapsize & (mapsize - 1):
        raise ValueError("mapsize must be a power of two")
    m = torch.zeros(b, mapsize, mapsize, dtype=torch.float64)
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(arr: torch.Tensor) -> torch.Tensor:
        noise = _uniform(arr.shape, -wibble, wibble, generator, "cpu").double()
        return arr / 4 + wibble * noise

    while stepsize >= 2:
        half = stepsize // 2
        # squares
        corner = m[:, 0::stepsize, 0::stepsize]
        acc = corner + torch.roll(corner, -1, dims=1)
        acc = acc + torch.roll(acc, -1, dims=2)
        m[:, half::stepsize, half::stepsize] = wibbledmean(acc)
        # diamonds
        dr = m[:, half::stepsize, half::stepsize]
        ul = m[:, 0::stepsize, 0::stepsize]
        lt = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        m[:, 0::stepsize, half::stepsize] = wibbledmean(lt)
        tt = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        m[:, half::stepsize, 0::stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return m.float().to(device)


def _rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma (OpenCV's RGB2GRAY), (B, 1, H, W)."""
    wts = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * wts).sum(dim=1, keepdim=True)


def _pil_box_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """The (out, in) resampling matrix of PIL's ``Image.BOX`` filter along one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    mat = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        for xi in range(xmin, xmax):
            t = (xi - center + 0.5) / filterscale
            if -0.5 < t <= 0.5:
                mat[xx, xi] = 1.0
        total = mat[xx].sum()
        if total > 0:
            mat[xx] /= total
    return mat


def _box_resize(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    rh = _pil_box_matrix(h, out_h).to(x.dtype).to(x.device)
    rw = _pil_box_matrix(w, out_w).to(x.dtype).to(x.device)
    # PIL resizes horizontally then vertically, rounding to uint8 after each pass
    y = _quantize(torch.einsum("bchw,ow->bcho", x, rw))
    return _quantize(torch.einsum("bchw,oh->bcow", y, rh))


# --------------------------------------------------------------------------------------------
# the two protocol perturbations
# --------------------------------------------------------------------------------------------


def gaussian_noise(x01: torch.Tensor, sigma: float, generator: Generator = None) -> torch.Tensor:
    """Additive Gaussian noise of std ``sigma`` in [0, 1] pixel space, then clamp to [0, 1]."""
    _check(x01)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    x = x01.float()
    return _finish(x + float(sigma) * _randn(x.shape, generator, x.device), x01)


def rotate(x01: torch.Tensor, max_deg: float = 30.0, generator: Generator = None) -> torch.Tensor:
    """Rotate each image about its centre by its own angle drawn uniformly from [-max_deg, max_deg].

    Bilinear interpolation; the corners that rotate in from outside are black (0). The whole
    batch is warped at once with ``affine_grid`` + ``grid_sample``.
    """
    _check(x01)
    x = x01.float()
    b, _, h, w = x.shape
    angles = _uniform((b,), -float(max_deg), float(max_deg), generator, x.device)
    return _rotate_by(x, angles).clamp(0, 1).to(x01.dtype)


def _rotate_by(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    rad = torch.deg2rad(angles_deg.float())
    cos, sin = torch.cos(rad), torch.sin(rad)
    # inverse map (output -> input) in pixel units about the centre; aspect-correct for h != w
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --------------------------------------------------------------------------------------------
# CIFAR-10-C corruptions (fn(x01, severity, generator))
# --------------------------------------------------------------------------------------------


def _c_gaussian_noise(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """x + N(0, c^2), c in [.04, .06, .08, .09, .10]."""
    return gaussian_noise(x01, _severity("gaussian_noise", severity), generator)


def _c_shot_noise(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Poisson(x * c) / c, c in [500, 250, 100, 75, 50]."""
    _check(x01)
    c = float(_severity("shot_noise", severity))
    rates = x01.float().clamp(0, 1) * c
    if isinstance(generator, (list, tuple)):
        if len(generator) != rates.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {rates.shape[0]} images")
        counts = torch.stack([torch.poisson(r.to(_gdev(g)), generator=g).cpu() for r, g in zip(rates, generator)])
    else:
        counts = torch.poisson(rates.to(_gdev(generator)), generator=generator)
    counts = counts.to(x01.device)
    return _finish(counts / c, x01)


def _c_impulse_noise(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Salt-and-pepper on a fraction c of all values (per channel), half salt, half pepper."""
    _check(x01)
    amount = float(_severity("impulse_noise", severity))
    x = x01.float().clone()
    flip = _rand(x.shape, generator, x.device) < amount
    salt = _rand(x.shape, generator, x.device) < 0.5
    x[flip & salt] = 1.0
    x[flip & ~salt] = 0.0
    return _finish(x, x01)


def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """Anti-aliased disk: indicator of x^2 + y^2 <= r^2 on a 17x17 grid, normalised, then a 3x3
    Gaussian blur of std ``alias_blur`` (the reference's ``disk`` for radius <= 8)."""
    if radius > 8:
        raise ValueError("only radius <= 8 (the CIFAR range) is implemented")
    ax = torch.arange(-8, 9, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    disk = disk / disk.sum()
    t = torch.arange(-1, 2, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * alias_blur**2))
    g = g / g.sum()
    padded = _pad2d(disk.view(1, 1, 17, 17), 1, 1, "reflect101")
    out = F.conv2d(padded, (g.view(3, 1) * g.view(1, 3)).view(1, 1, 3, 3))
    kernel = out.view(17, 17)
    nz = torch.nonzero(kernel > 0)
    r = int(max(nz[:, 0].sub(8).abs().max(), nz[:, 1].sub(8).abs().max()))
    return kernel[8 - r : 9 + r, 8 - r : 9 + r].float()


def _c_defocus_blur(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Convolution with an anti-aliased disk (radius, alias blur) per the CIFAR table."""
    _check(x01)
    radius, alias = _severity("defocus_blur", severity)
    return _finish(_filter2d(x01.float(), _disk_kernel(radius, alias).to(x01.device)), x01)


def _c_glass_blur(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Gaussian blur, local pixel jitter, blur again (CIFAR table: sigma, max_delta, iterations).

    As in the reference: blur (std ``sigma``, SciPy "nearest" border), quantise to uint8, then for
    ``iterations`` passes visit every interior pixel (h, w) from the bottom-right towards the
    top-left and "swap" it with (h + dy, w + dx), dx, dy uniform integers in [-max_delta,
    max_delta); then blur again. Note that the reference's tuple swap
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` acts on numpy *views* of an (H, W, 3) array, so it
    really copies: ``x[h, w] <- x[h', w']`` and ``x[h', w']`` is left unchanged. This module
    reproduces that behaviour (what the published images contain). With max_delta = 1 (every
    CIFAR severity) the source pixel has not been visited yet in the pass, so each pass is one
    vectorised gather; larger deltas fall back to the sequential loop.
    """
    _check(x01)
    sigma, delta, iters = _severity("glass_blur", severity)
    x = x01.float()
    b, c, h, w = x.shape
    y = torch.floor(_gaussian_blur(x, sigma).clamp(0, 1) * 255.0) / 255.0
    hs = torch.arange(h - delta, delta, -1)
    ws = torch.arange(w - delta, delta, -1)
    for _ in range(iters):
        # draws in the reference's visiting order: (h desc, w desc), (dx, dy) per pixel
        off = _randint(-delta, delta, (b, len(hs), len(ws), 2), generator, x.device)
        dx, dy = off[..., 0], off[..., 1]
        if delta == 1:
            src_h = hs.to(x.device).view(1, -1, 1) + dy
            src_w = ws.to(x.device).view(1, 1, -1) + dx
            flat = y.reshape(b, c, h * w)
            idx = (src_h * w + src_w).reshape(b, 1, -1).expand(b, c, -1)
            vals = flat.gather(2, idx).reshape(b, c, len(hs), len(ws))
            y = y.clone()
            y[:, :, hs.min() : hs.max() + 1, ws.min() : ws.max() + 1] = vals.flip(2, 3)
        else:  # sequential copies (not needed for the CIFAR table)
            bidx = torch.arange(b, device=x.device)
            yt = y.permute(0, 2, 3, 1).contiguous()
            for i, hh in enumerate(hs.tolist()):
                for j, ww in enumerate(ws.tolist()):
                    yt[:, hh, ww] = yt[bidx, hh + dy[:, i, j], ww + dx[:, i, j]]
            y = yt.permute(0, 3, 1, 2)
    return _finish(_gaussian_blur(y, sigma), x01)


def _c_motion_blur(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Motion blur (radius, sigma) at an angle uniform in [-45, 45] degrees per image."""
    _check(x01)
    radius, sigma = _severity("motion_blur", severity)
    x = x01.float()
    angles = _uniform((x.shape[0],), -45.0, 45.0, generator, "cpu")
    return _finish(_motion_blur(_quantize(x), radius, sigma, angles), x01)


def _c_zoom_blur(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Average of the image and its centre zooms by every factor of the severity's range."""
    _check(x01)
    factors = _severity("zoom_blur", severity)
    x = x01.float()
    out = torch.zeros_like(x)
    for z in factors:
        out = out + _zoom(x, z)
    return _finish((x + out) / (len(factors) + 1), x01)


def _c_snow(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Motion-blurred thresholded noise flakes over a whitened image (CIFAR snow table)."""
    _check(x01)
    loc, scale, zoom, thr, radius, sigma, blend = _severity("snow", severity)
    x = x01.float()
    b, _, h, w = x.shape
    layer = loc + scale * _randn((b, 1, h, w), generator, x.device)
    layer = _zoom(layer, zoom)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    layer = _quantize(layer)
    angles = _uniform((b,), -135.0, -45.0, generator, "cpu")
    layer = _quantize(_motion_blur(layer, radius, sigma, angles))
    gray = _rgb_to_gray(x)
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return _finish(x + layer + torch.flip(layer, dims=(-2, -1)), x01)


#: the five frost photographs CIFAR-10-C draws from (see the module docstring)
FROST_ASSET = Path(__file__).resolve().parent / "assets" / "frost_cifar.npz"


@functools.lru_cache(maxsize=1)
def frost_images() -> tuple[torch.Tensor, ...]:
    """The five shrunk frost photographs as float (3, H, W) tensors in [0, 1]."""
    try:
        with np.load(FROST_ASSET) as data:
            return tuple(torch.from_numpy(np.array(data[f"frost{i}"])).permute(2, 0, 1).float() / 255.0 for i in range(1, 6))
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptionUnavailable(f"frost photographs unreadable ({FROST_ASSET}): {exc}") from exc


def _c_frost(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """``c0 * x + c1 * crop``: a uniformly placed (H, W) crop of one of the five frost photographs.

    As the CIFAR generator: the photograph is ``randint(5)``, the crop's top-left corner is
    uniform over ``[0, height - H) x [0, width - W)`` of the shrunk photograph.
    """
    _check(x01)
    a, f = _severity("frost", severity)
    x = x01.float()
    b, _, h, w = x.shape
    photos = frost_images()
    if any(p.shape[1] <= h or p.shape[2] <= w for p in photos):
        raise CorruptionUnavailable(f"frost photographs are too small for {h}x{w} images")
    which = _randint(0, len(photos), (b,), generator, "cpu")
    corner = _rand((b, 2), generator, "cpu")
    crops = []
    for i in range(b):
        photo = photos[int(which[i])]
        top = int(corner[i, 0] * (photo.shape[1] - h))
        left = int(corner[i, 1] * (photo.shape[2] - w))
        crops.append(photo[:, top : top + h, left : left + w])
    frost = torch.stack(crops).to(x.device) if crops else torch.zeros_like(x)
    return _finish(a * x + f * frost, x01)


def _c_fog(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Add a plasma fractal (mapsize 32, per-severity decay), rescale by max / (max + c0)."""
    _check(x01)
    strength, decay = _severity("fog", severity)
    x = x01.float()
    b, _, h, w = x.shape
    size = 1 << max(int(math.ceil(math.log2(max(h, w, 2)))), 1)
    plasma = _plasma_fractal(b, size, decay, generator, x.device)[:, :h, :w].unsqueeze(1)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + strength * plasma
    return _finish(x * max_val / (max_val + strength), x01)


def _c_brightness(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Add c to the HSV value channel (clipped to 1) keeping hue and saturation.

    Closed form of rgb -> hsv -> (v + c) -> rgb: every channel scales by v' / v (v = max
    channel); black pixels (v = 0, saturation 0) become grey v'.
    """
    _check(x01)
    c = float(_severity("brightness", severity))
    x = x01.float().clamp(0, 1)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return _finish(torch.where(v > 0, scaled, v_new.expand_as(x)), x01)


def _c_contrast(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """(x - m) * c + m with m the per-image, per-channel mean."""
    _check(x01)
    c = float(_severity("contrast", severity))
    x = x01.float()
    m = x.mean(dim=(2, 3), keepdim=True)
    return _finish((x - m) * c + m, x01)


def _elastic_fields(
    b: int, h: int, w: int, severity: int, generator: Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampling maps of ``elastic_transform`` on the CPU: affine source coordinates (sx, sy) and
    the elastic displacement (dx, dy), each (B, H, W) in pixels."""
    alpha, sigma, jitter = _severity("elastic_transform", severity)
    # affine (cv2.getAffineTransform + warpAffine); points in (x, y) pixel coordinates
    cs = torch.tensor([w // 2, h // 2], dtype=torch.float64)
    sq = min(h, w) // 3
    pts1 = torch.stack([cs + sq, torch.stack([cs[0] + sq, cs[1] - sq]), cs - sq])  # (3, 2)
    pts2 = pts1 + _uniform((b, 3, 2), -jitter, jitter, generator, "cpu").double()
    ones = torch.ones(b, 3, 1, dtype=torch.float64)
    # inverse map dst -> src: solve [pts2, 1] @ X = pts1, X (3, 2)
    sol = torch.linalg.solve(torch.cat([pts2, ones], dim=2), pts1.expand(b, 3, 2))
    xs, ys = _pixel_grid(b, h, w, "cpu")
    xs, ys = xs.double(), ys.double()
    coef = [sol[:, i, j].view(b, 1, 1) for i in range(3) for j in range(2)]
    sx = xs * coef[0] + ys * coef[2] + coef[4]
    sy = xs * coef[1] + ys * coef[3] + coef[5]
    # elastic displacement: alpha * gaussian(U(-1, 1), sigma, mode="reflect", truncate=3)
    noise = _uniform((b, 2, h, w), -1.0, 1.0, generator, "cpu")
    disp = _gaussian_blur(noise, sigma, truncate=3.0, mode="symmetric") * alpha
    return sx.float(), sy.float(), disp[:, 0], disp[:, 1]


def _c_elastic_transform(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """Random affine warp, then a Gaussian-smoothed random displacement field (CIFAR table).

    Affine: the three points centre +- size // 3 are jittered by U(-c2, c2) and the image is warped
    with the affine map fitted to them (reflect-101 border). Elastic: displacements
    ``c0 * gaussian(U(-1, 1), sigma=c1, truncate=3)`` in x and y, bilinear, SciPy "reflect" border.
    With the CIFAR table the affine jitter *shrinks* with severity (2.56 -> 0.96 px) while the
    elastic part grows from nothing (alpha = 0 at severity 1), so the mean pixel change is not
    monotone in severity; the non-rigid distortion is.
    """
    _check(x01)
    x = x01.float()
    b, _, h, w = x.shape
    sx, sy, dx, dy = _elastic_fields(b, h, w, severity, generator)
    warped = _sample(x, sx.to(x.device), sy.to(x.device), "reflect101")
    xs, ys = _pixel_grid(b, h, w, x.device)
    out = _sample(warped, xs + dx.to(x.device), ys + dy.to(x.device), "symmetric")
    return _finish(out, x01)


def _c_pixelate(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """PIL BOX downscale to int(32 * c) then BOX upscale back (uint8 rounding after each pass)."""
    _check(x01)
    c = float(_severity("pixelate", severity))
    x = _quantize(x01.float())
    h, w = x.shape[-2:]
    small = _box_resize(x, int(h * c), int(w * c))
    return _finish(_box_resize(small, h, w), x01)


def _c_jpeg_compression(x01: torch.Tensor, severity: int, generator: Generator = None) -> torch.Tensor:
    """JPEG encode/decode at quality [80, 65, 58, 50, 40] with Pillow, as the reference does.

    Falls back to torchvision's libjpeg codec if Pillow is missing (bit-identical output in our
    checks); raises :class:`CorruptionUnavailable` if neither codec works.
    """
    _check(x01)
    quality = int(_severity("jpeg_compression", severity))
    u8 = torch.round(x01.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()
    try:
        out = _jpeg_pil(u8, quality)
    except ImportError:
        try:
            out = _jpeg_torchvision(u8, quality)
        except Exception as exc:
            raise CorruptionUnavailable(f"no JPEG codec available: {exc}") from exc
    except Exception as exc:
        raise CorruptionUnavailable(f"JPEG round trip failed: {exc}") from exc
    return _finish(out.float().div(255.0).to(x01.device), x01)


def _jpeg_pil(u8: torch.Tensor, quality: int) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    out = []
    for img in u8.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as dec:
            out.append(np.array(dec.convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _jpeg_torchvision(u8: torch.Tensor, quality: int) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 deprecates its image codecs
        from torchvision.io import decode_jpeg, encode_jpeg

        decoded = decode_jpeg(encode_jpeg(list(u8.unbind(0)), quality=quality))
    return torch.stack(list(decoded))


CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": _c_gaussian_noise,
    "shot_noise": _c_shot_noise,
    "impulse_noise": _c_impulse_noise,
    "defocus_blur": _c_defocus_blur,
    "glass_blur": _c_glass_blur,
    "motion_blur": _c_motion_blur,
    "zoom_blur": _c_zoom_blur,
    "snow": _c_snow,
    "frost": _c_frost,
    "fog": _c_fog,
    "brightness": _c_brightness,
    "contrast": _c_contrast,
    "elastic_transform": _c_elastic_transform,
    "pixelate": _c_pixelate,
    "jpeg_compression": _c_jpeg_compression,
}
assert tuple(CORRUPTIONS) == CIFAR10C_CORRUPTIONS


def corrupt(x01: torch.Tensor, name: str, severity: int, generator: Generator = None) -> torch.Tensor:
    """Apply the CIFAR-10-C corruption ``name`` at ``severity`` (1..5) to ``x01`` (B, 3, H, W)."""
    if name not in CORRUPTIONS:
        raise KeyError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    return CORRUPTIONS[name](x01, severity, generator)
