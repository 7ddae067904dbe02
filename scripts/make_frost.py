#!/usr/bin/env python
"""Build ``src/autonorm/eval/assets/frost_cifar.npz``: the frost photographs of CIFAR-10-C.

CIFAR-10-C's frost (Hendrycks & Dietterich, 2019, "Benchmarking Neural Network Robustness to
Common Corruptions and Perturbations"; the authors' CIFAR generator) blends a random 32x32 crop of
one of the photographs ``frost1.png`` ... ``frost5.jpg`` (the generator draws the index from
``randint(5)``, so ``frost6.jpg`` is never used), each first shrunk by a factor 0.2 with OpenCV's
bilinear ``resize``. The photographs (Apache-2.0, from the ImageNet-C repository) ship in the
PyPI package ``imagecorruptions``; this script reads them from an installed copy (located with
``importlib.util.find_spec``, without importing the package, whose import needs OpenCV and
scikit-image) or from a folder given with ``--source`` (e.g. an unzipped wheel:
``pip download --no-deps imagecorruptions==1.1.2``), shrinks them exactly as the generator does
and stores the five uint8 RGB arrays with their provenance (file names, sha256, sizes).

The shrink is bilinear with half-pixel centres and no anti-aliasing, which is OpenCV's
``INTER_LINEAR`` (``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``);
OpenCV's fixed-point arithmetic can differ by one grey level. The output size is OpenCV's
``round(0.2 * size)``.

    python scripts/make_frost.py [--source DIR] [--out src/autonorm/eval/assets/frost_cifar.npz]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
SCALE = 0.2


def _package_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")  # finds the folder; runs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "error: imagecorruptions is not installed; pass --source DIR (a folder holding frost/frost1.png ...),\n"
            "e.g. from `pip download --no-deps imagecorruptions==1.1.2` and unzip"
        )
    return Path(list(spec.submodule_search_locations)[0])


def shrink(rgb: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """OpenCV-style bilinear ``resize(img, (0, 0), fx=scale, fy=scale)`` of a uint8 (H, W, 3) image."""
    h, w = rgb.shape[:2]
    size = (int(round(h * scale)), int(round(w * scale)))
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].double()
    # scale_factor (not size): OpenCV maps output to input pixels with 1 / fx whatever the rounding
    y = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
    if tuple(y.shape[-2:]) != size:
        raise ValueError(f"shrunk size {tuple(y.shape[-2:])} differs from OpenCV's {size}")
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=None, help="folder holding frost/frost1.png ... (default: installed imagecorruptions)")
    ap.add_argument("--out", type=Path, default=REPO / "src/autonorm/eval/assets/frost_cifar.npz")
    args = ap.parse_args()
    root = args.source if args.source is not None else _package_dir()
    folder = root / "frost" if (root / "frost").is_dir() else root
    arrays, provenance = {}, []
    for i, name in enumerate(FILES):
        path = folder / name
        if not path.is_file():
            print(f"error: {path} not found", file=sys.stderr)
            return 1
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))  # like cv2.imread(IMREAD_COLOR): alpha dropped
        small = shrink(rgb)
        arrays[f"frost{i + 1}"] = small
        provenance.append({"file": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                           "size_hw": list(rgb.shape[:2]), "shrunk_hw": list(small.shape[:2])})
    meta = {"source": "imagecorruptions (PyPI) frost/, Apache-2.0; photographs of the ImageNet-C repository",
            "scale": SCALE, "resize": "bilinear, half-pixel centres, no anti-aliasing (OpenCV INTER_LINEAR)",
            "files": provenance}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, provenance=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): " + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
