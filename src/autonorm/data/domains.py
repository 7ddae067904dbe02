"""Digit target domains for single-source domain generalisation from MNIST, built offline.

Every target is a set of uint8 images (N, 32, 32, 3) (channels-last, like the ``.npz`` files of
:mod:`autonorm.data.npz`) with labels 0..9, deterministic in its seed, and carries a provenance
string that says where its pixels come from. They are the targets a model trained on MNIST alone
is scored on (``eval.domains``; see :mod:`autonorm.eval.domains`).

Generated here from sources available offline:

* ``uci_digits``: the UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak,
  1998) as scikit-learn ships it (``sklearn.datasets.load_digits``: 1797 images, 8x8, integer
  grey levels 0..16, other writers and another scanner than MNIST). Grey level g becomes pixel
  ``255 * g / 16`` (ink bright on dark, as in MNIST) and the 8x8 frame is upsampled to 32x32
  (bilinear), so the digit fills the frame, as digits resized to 32x32 do in the usual
  digits benchmark (Volpi et al., 2018).
* ``syn_digits``: printed digits in the spirit of SYN digits (Ganin & Lempitsky, 2015, "Unsupervised
  Domain Adaptation by Backpropagation"): rendered with Pillow from the TrueType fonts that
  matplotlib ships (DejaVu Sans / Serif / Mono in several weights, STIX, Computer Modern), with a
  random font, size, position, rotation, stroke and background colours, blur and, half of the
  time, neighbouring digits cut by the frame (as in house-number crops). The label is the centre digit.
* ``mnist_m``: MNIST-M-like images. Ganin et al. (2016, "Domain-Adversarial Training of Neural
  Networks") blend each MNIST digit with a random patch of a BSDS500 photo by the absolute
  difference ``|patch - digit|`` per channel. BSDS500 is not available offline: patches of
  CIFAR-10 *training* images (random crop, resized to 32x32, random flip) are the substitute
  here. The digits are the source data set's *test* images.

Real targets, used when the user has them (never downloaded here):

* ``svhn``, ``usps``: ``<root>/svhn.npz`` / ``<root>/usps.npz`` in the ``.npz`` convention of
  :mod:`autonorm.data.npz` (the test split is used), else torchvision's ``SVHN`` / ``USPS``
  loaders on raw files already in ``<root>`` (or ``<root>/svhn``, ``<root>/usps``), without
  download. Images of another size (USPS: 16x16) are resized to 32x32 (bilinear), grey ones
  repeated to 3 channels.

:func:`load_domain` caches a built target as ``<cache_dir>/<name>-<key>.npz`` (arrays ``x``,
``y``, ``provenance``), keyed by the builder version, size, seed and a fingerprint of the
sources, written atomically; a damaged cache file is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .npz import DataError, load_npz, write_npz_atomic

__all__ = [
    "BUILDER_VERSION",
    "DOMAIN_NAMES",
    "GENERATED_DOMAINS",
    "REAL_DOMAINS",
    "SYN_FONTS",
    "Domain",
    "DomainUnavailable",
    "build_mnist_m",
    "build_syn_digits",
    "build_uci_digits",
    "load_domain",
    "load_real_domain",
    "to_rgb32",
]

GENERATED_DOMAINS: tuple[str, ...] = ("uci_digits", "syn_digits", "mnist_m")
REAL_DOMAINS: tuple[str, ...] = ("svhn", "usps")
DOMAIN_NAMES: tuple[str, ...] = GENERATED_DOMAINS + REAL_DOMAINS

#: bump when a builder changes what it produces: cached files of other versions are not reused
BUILDER_VERSION = 1

#: font files (in matplotlib's ``mpl-data/fonts/ttf``) used for ``syn_digits``: the ones with
#: ordinary digit glyphs (not the symbol, size-variant or fallback fonts)
SYN_FONTS: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmti10.ttf",
)


class DomainUnavailable(DataError):
    """A target domain cannot be built here (e.g. SVHN / USPS files absent from the data root)."""


@dataclass
class Domain:
    """One target set: ``x`` uint8 (N, 32, 32, 3), ``y`` int64 (N,) in 0..9, and where it comes from."""

    name: str
    x: np.ndarray
    y: np.ndarray
    provenance: str

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4 or self.x.shape[1:] != (32, 32, 3):
            raise DataError(f"domain '{self.name}': images must be uint8 (N, 32, 32, 3), got {self.x.dtype} {self.x.shape}")
        if self.y.shape != (self.x.shape[0],) or self.x.shape[0] == 0:
            raise DataError(f"domain '{self.name}': {self.x.shape[0]} images but labels of shape {self.y.shape}")
        if int(self.y.min()) < 0 or int(self.y.max()) > 9:
            raise DataError(f"domain '{self.name}': labels outside 0..9")
        self.y = self.y.astype(np.int64, copy=False)


# ------------------------------------------------------------------------------------ helpers
def _rng(seed: int, *words: int) -> np.random.Generator:
    """A generator for (seed, words): image i of a set does not depend on how many are drawn."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(w) for w in words]])


def _balanced_labels(n: int, seed: int) -> np.ndarray:
    return _rng(seed, 10**6).permutation(np.arange(n) % 10).astype(np.int64)


def _subset(n_total: int, n: Optional[int], seed: int) -> np.ndarray:
    """Indices of a seeded random subset of size ``min(n, n_total)`` (all, in order, when n is None)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(_rng(seed, 10**6 + 1).choice(n_total, size=int(n), replace=False))


def to_rgb32(x: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W[, C]) with C in {1, 3} to uint8 (N, 32, 32, 3): bilinear resize, grey to RGB."""
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"expected uint8 images (N, H, W, C) with C in (1, 3), got {x.dtype} {x.shape}")
    if x.shape[1:3] != (32, 32):
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False, antialias=x.shape[1] > 32)
        x = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x)


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ builders
def build_uci_digits(n: Optional[int] = None, seed: int = 0) -> Domain:
    """The scikit-learn copy of the UCI digits test set, 8x8 upsampled to 32x32 (see module doc).

    ``n`` (default all 1797) draws a seeded random subset.
    """
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError as err:  # a declared dependency; only a broken install lacks it
        raise DomainUnavailable("uci_digits needs scikit-learn (pip install scikit-learn)") from err
    digits = load_digits()
    grey = np.asarray(digits.images, dtype=np.float32)  # (1797, 8, 8), 0..16
    idx = _subset(grey.shape[0], n, seed)
    t = torch.from_numpy(grey[idx] / 16.0).unsqueeze(1)
    t = F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    x = (t.clamp(0, 1) * 255.0).round().to(torch.uint8).squeeze(1).numpy()
    prov = (
        f"uci_digits: UCI Optical Recognition of Handwritten Digits, test set (Alpaydin & Kaynak 1998) "
        f"via sklearn.datasets.load_digits (scikit-learn {sklearn.__version__}); {len(idx)} of "
        f"{grey.shape[0]} images (seed {seed}); grey 0..16 -> 255*g/16, 8x8 -> 32x32 bilinear, RGB"
    )
    return Domain("uci_digits", to_rgb32(x), np.asarray(digits.target)[idx], prov)


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _render_syn(label: int, rng: np.random.Generator, fonts: list[Path], scale: int = 2) -> np.ndarray:
    """One SYN-like 32x32 RGB digit (uint8 (32, 32, 3)), drawn at ``scale`` x and downsampled."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    size = 32 * scale
    font_path = fonts[int(rng.integers(len(fonts)))]
    height = rng.uniform(0.45, 0.8) * size  # digit height as a fraction of the frame
    font = ImageFont.truetype(str(font_path), size=max(8, int(round(height / 0.73))))
    left, right = (str(int(rng.integers(0, 10))) if rng.random() < 0.5 else "" for _ in range(2))
    text = f"{left}{label}{right}"
    l, t, r, b = font.getbbox(str(label))
    prefix = font.getlength(left)
    centre = np.array([size / 2, size / 2]) + rng.uniform(-0.08, 0.08, size=2) * size
    origin = (float(centre[0] - prefix - (l + r) / 2), float(centre[1] - (t + b) / 2))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).text(origin, text, fill=255, font=font)
    mask = mask.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, center=tuple(centre))
    blur = float(rng.uniform(0.0, 1.5)) * scale / 2
    # stroke and background colours with a luminance difference of at least 0.25
    luma = np.array([0.299, 0.587, 0.114])
    while True:
        fg, bg = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
        if abs(float((fg - bg) @ luma)) >= 0.25 * 255:
            break
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    img = Image.fromarray(np.round(bg * (1 - m) + fg * m).astype(np.uint8), "RGB")
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    img = img.resize((32, 32), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


def build_syn_digits(n: int = 2000, seed: int = 0) -> Domain:
    """``n`` printed digits rendered from matplotlib's fonts (see module doc); balanced labels."""
    import matplotlib
    import PIL

    font_dir = _font_dir()
    fonts = [font_dir / f for f in SYN_FONTS if (font_dir / f).is_file()]
    if not fonts:
        raise DomainUnavailable(f"syn_digits: none of matplotlib's fonts were found in {font_dir}")
    y = _balanced_labels(int(n), seed)
    x = np.stack([_render_syn(int(label), _rng(seed, i), fonts) for i, label in enumerate(y)])
    prov = (
        f"syn_digits: {n} printed digits (seed {seed}) in the spirit of SYN digits (Ganin & Lempitsky 2015), "
        f"rendered with Pillow {PIL.__version__} from {len(fonts)} TrueType fonts of matplotlib "
        f"{matplotlib.__version__} ({', '.join(f.stem for f in fonts)}); random size, position, "
        f"rotation (+-20 deg), colours, Gaussian blur, neighbouring digits"
    )
    return Domain("syn_digits", x, y, prov)


def build_mnist_m(
    digits: np.ndarray,
    labels: np.ndarray,
    textures: np.ndarray,
    n: Optional[int] = 2000,
    seed: int = 0,
    digits_source: str = "MNIST test",
    textures_source: str = "CIFAR-10 train",
) -> Domain:
    """MNIST-M-like images: ``|patch - digit|`` per channel (Ganin et al. 2016's blend).

    Args:
        digits: uint8 grey digits (N, H, W[, C]) (MNIST test images; 28x28 are padded like
            :func:`autonorm.data.npz.to_served_format`, i.e. the digit keeps its MNIST scale).
        labels: their labels (N,).
        textures: uint8 colour images (M, 32, 32, 3): the patches' source (CIFAR-10 training
            images here; the original recipe uses BSDS500 photos).
        n: how many (a seeded subset of the digits; None: all).
    """
    if digits.ndim == 3:
        digits = digits[..., None]
    if digits.shape[1:3] == (28, 28):
        digits = np.pad(digits, ((0, 0), (2, 2), (2, 2), (0, 0)))
    grey = to_rgb32(np.ascontiguousarray(digits[..., :1]))[..., 0]  # (N, 32, 32)
    textures = to_rgb32(textures)
    idx = _subset(grey.shape[0], n, seed)
    out = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
    tex = torch.from_numpy(textures).permute(0, 3, 1, 2)
    for k, i in enumerate(idx):
        rng = _rng(seed, int(i))
        j = int(rng.integers(textures.shape[0]))
        s = int(rng.integers(16, 33))  # patch side, then resized to 32x32
        r0, c0 = (int(v) for v in rng.integers(0, 32 - s + 1, size=2))
        patch = tex[j : j + 1, :, r0 : r0 + s, c0 : c0 + s].float()
        if s != 32:
            patch = F.interpolate(patch, size=(32, 32), mode="bilinear", align_corners=False)
        if rng.random() < 0.5:
            patch = patch.flip(-1)
        patch = patch[0].permute(1, 2, 0).numpy()
        out[k] = np.round(np.abs(patch - grey[i][..., None].astype(np.float32))).clip(0, 255).astype(np.uint8)
    prov = (
        f"mnist_m: MNIST-M recipe (Ganin et al. 2016: |patch - digit| per channel) on {len(idx)} "
        f"digits of {digits_source} (seed {seed}); patches (side 16..32 px, resized to 32x32, random "
        f"flip) from {textures_source} instead of BSDS500 photos (not available offline)"
    )
    return Domain("mnist_m", out, np.asarray(labels)[idx], prov)


# ------------------------------------------------------------------------------------ real sets
def _torchvision_test(name: str, root: Path) -> Optional[tuple[np.ndarray, np.ndarray, str]]:
    import torchvision

    cls = {"svhn": torchvision.datasets.SVHN, "usps": torchvision.datasets.USPS}[name]
    for folder in (root, root / name):
        try:
            ds = cls(str(folder), split="test", download=False) if name == "svhn" else cls(str(folder), train=False, download=False)
        except (RuntimeError, OSError, ImportError, ValueError):
            continue
        data = np.asarray(ds.data)
        if name == "svhn":  # (N, 3, 32, 32); torchvision maps the label 10 of digit 0 to 0
            x, y = data.transpose(0, 2, 3, 1), np.asarray(ds.labels)
        else:  # (N, 16, 16) uint8
            x, y = data, np.asarray(ds.targets)
        return np.ascontiguousarray(x, dtype=np.uint8), y.astype(np.int64), f"torchvision.datasets.{cls.__name__} test split in {folder}"
    return None


def load_real_domain(name: str, root: str | os.PathLike[str], n: Optional[int] = None, seed: int = 0) -> Domain:
    """SVHN or USPS test images from ``root`` (see module doc); :class:`DomainUnavailable` if absent."""
    if name not in REAL_DOMAINS:
        raise DataError(f"unknown real domain '{name}'; choose one of: {', '.join(REAL_DOMAINS)}")
    root = Path(root).expanduser()
    path = root / f"{name}.npz"
    if path.is_file():
        arrays = load_npz(path, name)
        x, y, src = arrays["x_test"], arrays["y_test"], f"{path} (x_test, y_test)"
    else:
        found = _torchvision_test(name, root)
        if found is None:
            raise DomainUnavailable(
                f"{name}: not in the data root {root} (neither {path.name} nor torchvision's raw files)"
            )
        x, y, src = found
    idx = _subset(x.shape[0], n, seed)
    shape = "x".join(str(s) for s in x.shape[1:3])
    prov = f"{name}: {len(idx)} of {x.shape[0]} test images of {src} (seed {seed}); {shape} -> 32x32 RGB"
    return Domain(name, to_rgb32(x[idx]), y[idx], prov)


# ------------------------------------------------------------------------------------ cache
def _read_cache(path: Path, name: str) -> Optional[Domain]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Domain(name, z["x"], z["y"], str(z["provenance"].item()))
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
        return None


def load_domain(
    name: str,
    *,
    n: int = 2000,
    seed: int = 0,
    root: str | os.PathLike[str] = "data",
    cache_dir: Optional[str | os.PathLike[str]] = None,
    source: Optional[tuple[np.ndarray, np.ndarray, str]] = None,
    textures: Optional[str | os.PathLike[str]] = None,
) -> Domain:
    """Target ``name`` with at most ``n`` images, built with ``seed``, cached in ``cache_dir``.

    ``mnist_m`` needs ``source`` (digit images, labels, a description) and ``textures`` (an
    ``.npz`` data file whose ``x_train`` colour images give the patches; read only when the
    target is built, identified in the cache key by its content hash). Real domains are read
    from ``root`` each time (they are files already). Raises :class:`DomainUnavailable` when a
    target cannot be had here.
    """
    if name not in DOMAIN_NAMES:
        raise DataError(f"unknown domain '{name}'; choose from: {', '.join(DOMAIN_NAMES)}")
    if name in REAL_DOMAINS:
        return load_real_domain(name, root, n=n, seed=seed)
    key_parts = [name, str(BUILDER_VERSION), str(n), str(seed)]
    if name == "mnist_m":
        if source is None or textures is None:
            raise DataError("mnist_m needs the source digits and the texture images")
        key_parts += [_fingerprint(source[0], source[1]), _file_hash(Path(textures))]
    if name == "syn_digits":
        import PIL

        key_parts.append(PIL.__version__)  # glyph rasterisation may differ between versions
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{name}-n{n}-s{seed}-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        cached = _read_cache(path, name)
        if cached is not None:
            return cached
    if name == "uci_digits":
        dom = build_uci_digits(n, seed)
    elif name == "syn_digits":
        dom = build_syn_digits(n, seed)
    else:
        tex = load_npz(textures)["x_train"]
        tex_src = f"the training images of {Path(textures).name} ({tex.shape[0]} images)"
        dom = build_mnist_m(source[0], source[1], tex, n, seed, source[2], tex_src)
    if path is not None:
        write_npz_atomic(path, x=dom.x, y=dom.y, provenance=np.array(dom.provenance))
    return dom
