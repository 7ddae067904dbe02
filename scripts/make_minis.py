#!/usr/bin/env python
"""Build the packaged minis (src/autonorm/data/minis/{mnist,cifar10}_mini.npz) from the full files.

Deterministic: a fixed seed picks the same number of images per class (stratified) from each
split, the picked images are then shuffled (so any prefix is class-mixed), and the archive is
written with fixed zip timestamps, so rerunning gives byte-identical files. Each mini stores the
arrays of the full files plus a ``provenance`` JSON string (source sha256, seed, counts).

Usage: python scripts/make_minis.py [--src ../shared/data] [--out src/autonorm/data/minis]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from autonorm.data.npz import load_npz, write_npz_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "src" / "autonorm" / "data" / "minis"

# (train images, test images); multiples of 10 so every class gets exactly the same share.
# CIFAR images compress poorly (~2.8 kB each): 3000 of them plus the MNIST mini stay under ~10 MB.
COUNTS = {"mnist": (5000, 1000), "cifar10": (2500, 500)}
SEED = 0


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stratified(y: np.ndarray, total: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``total // num_classes`` random images per class, in shuffled order."""
    if total % num_classes:
        raise ValueError(f"count {total} is not a multiple of {num_classes} classes")
    per = total // num_classes
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < per:
            raise ValueError(f"class {c} has only {len(idx)} images, {per} needed")
        picks.append(np.sort(rng.choice(idx, size=per, replace=False)))
    out = np.concatenate(picks)
    return out[rng.permutation(len(out))]


def build(name: str, src: Path, out: Path, seed: int) -> Path:
    path = src / f"{name}.npz"
    data = load_npz(path, name)
    n_train, n_test = COUNTS[name]
    num_classes = len(data["classes"])
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    tr = stratified(data["y_train"], n_train, num_classes, rng)
    te = stratified(data["y_test"], n_test, num_classes, rng)
    provenance = {
        "dataset": f"{name}_mini",
        "source_file": path.name,
        "source_sha256": sha256(path),
        "seed": seed,
        "method": "stratified: equal random share per class from each split (numpy default_rng"
        f"([seed, sum(map(ord, '{name}'))])), then shuffled; built by scripts/make_minis.py",
        "train_count": int(n_train),
        "test_count": int(n_test),
        "train_per_class": int(n_train // num_classes),
        "test_per_class": int(n_test // num_classes),
        "source_train_indices_sha256": hashlib.sha256(tr.astype(np.int64).tobytes()).hexdigest(),
        "source_test_indices_sha256": hashlib.sha256(te.astype(np.int64).tobytes()).hexdigest(),
    }
    dest = out / f"{name}_mini.npz"
    write_npz_atomic(
        dest,
        x_train=np.ascontiguousarray(data["x_train"][tr]),
        y_train=data["y_train"][tr].astype(np.int64),
        x_test=np.ascontiguousarray(data["x_test"][te]),
        y_test=data["y_test"][te].astype(np.int64),
        classes=np.array(data["classes"]),
        provenance=np.array(json.dumps(provenance, sort_keys=True)),
    )
    load_npz(dest, f"{name}_mini")  # validate what was written
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with mnist.npz and cifar10.npz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the minis are written")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    total = 0
    for name in COUNTS:
        dest = build(name, args.src, args.out, args.seed)
        size = dest.stat().st_size
        total += size
        print(f"{dest}: {size:,} bytes ({size / 1e6:.2f} MB), train/test = {COUNTS[name]}, sha256 {sha256(dest)}")
    print(f"total: {total:,} bytes ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
