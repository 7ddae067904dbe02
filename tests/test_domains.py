"""Digit target domains, eval.domains on a trained checkpoint, and the domain-generalisation table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autonorm.data import domains as D
from autonorm.data import resolve_dataset, write_npz_atomic
from autonorm.errors import AutoNormError
from autonorm.pipeline.dg_table import dg_rows, render_dg

from conftest import REPO

N = 40


@pytest.fixture(scope="module")
def minis():
    return resolve_dataset("mnist_mini"), resolve_dataset("cifar10_mini")


def _build(name: str, seed: int, minis) -> D.Domain:
    mnist, cifar = minis
    if name == "uci_digits":
        return D.build_uci_digits(N, seed)
    if name == "syn_digits":
        return D.build_syn_digits(N, seed)
    return D.build_mnist_m(mnist["x_test"], mnist["y_test"], cifar["x_train"], N, seed)


@pytest.mark.parametrize("name", D.GENERATED_DOMAINS)
def test_generated_domain_is_deterministic_valid_and_not_mnist(name, minis):
    a, b, other = _build(name, 0, minis), _build(name, 0, minis), _build(name, 1, minis)
    assert a.x.dtype == np.uint8 and a.x.shape == (N, 32, 32, 3)
    assert a.y.dtype == np.int64 and a.y.shape == (N,) and set(a.y.tolist()) <= set(range(10))
    assert len(set(a.y.tolist())) >= 5  # several classes, not one
    assert a.x.tobytes() == b.x.tobytes() and a.y.tobytes() == b.y.tobytes()  # same seed, same bytes
    assert a.x.tobytes() != other.x.tobytes()  # another seed, other images
    assert a.x.max() > 128 and a.x.min() < 64  # the uint8 range is used, not a constant image
    assert name.split("_")[0] in a.provenance and str(N) in a.provenance
    # not MNIST: no image equals an MNIST image, and the pixel statistics differ
    mnist = minis[0]["x_test"]
    mnist32 = np.repeat(np.pad(mnist, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)
    seen = {img.tobytes() for img in mnist32}
    assert not any(img.tobytes() in seen for img in a.x)
    ink = (a.x.astype(float) / 255).mean()
    assert abs(ink - (mnist32.astype(float) / 255).mean()) > 0.02 or name == "uci_digits"
    if name != "uci_digits":  # colour domains: the channels differ
        assert np.abs(a.x[..., 0].astype(int) - a.x[..., 1]).mean() > 5


def test_uci_digits_are_the_sklearn_digits_upsampled():
    from sklearn.datasets import load_digits

    dom = D.build_uci_digits()
    raw = load_digits()
    assert dom.x.shape[0] == 1797 and (dom.y == raw.target).all()
    # the 8x8 block means of each upsampled image follow the grey levels (x 255/16; bilinear blurs a little)
    back = dom.x[..., 0].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)) * 16 / 255
    assert np.corrcoef(back.ravel(), raw.images.ravel())[0, 1] > 0.95
    assert abs(back.mean() - raw.images.mean()) < 0.1
    assert (dom.x[..., 0] == dom.x[..., 2]).all()  # grey


def test_mnist_m_keeps_the_digit_and_its_label(minis):
    mnist, cifar = minis
    dom = D.build_mnist_m(mnist["x_test"], mnist["y_test"], cifar["x_train"], N, 0)
    idx = D._subset(mnist["x_test"].shape[0], N, 0)
    assert (dom.y == mnist["y_test"][idx]).all()
    # the blend is |patch - digit| per channel: with a flat texture it is exactly |c - digit|
    flat = np.full((3, 32, 32, 3), (100, 30, 220), dtype=np.uint8)
    blend = D.build_mnist_m(mnist["x_test"], mnist["y_test"], flat, N, 0)
    digit = np.pad(mnist["x_test"][idx], ((0, 0), (2, 2), (2, 2), (0, 0))).astype(int)
    assert (blend.x.astype(int) == np.abs(np.array([100, 30, 220]) - digit)).all()


def test_load_domain_caches_and_rebuilds_a_damaged_file(tmp_path):
    first = D.load_domain("syn_digits", n=12, seed=3, cache_dir=tmp_path)
    files = list(tmp_path.glob("syn_digits-*.npz"))
    assert len(files) == 1
    again = D.load_domain("syn_digits", n=12, seed=3, cache_dir=tmp_path)
    assert again.x.tobytes() == first.x.tobytes() and again.provenance == first.provenance
    files[0].write_bytes(b"not a zip")
    rebuilt = D.load_domain("syn_digits", n=12, seed=3, cache_dir=tmp_path)
    assert rebuilt.x.tobytes() == first.x.tobytes()
    with pytest.raises(D.DataError, match="unknown domain"):
        D.load_domain("mnist_q", n=3)


def test_real_domains_read_from_the_data_root_or_are_unavailable(tmp_path):
    with pytest.raises(D.DomainUnavailable, match="svhn"):
        D.load_real_domain("svhn", tmp_path)
    rng = np.random.default_rng(0)
    x16 = rng.integers(0, 256, size=(7, 16, 16, 1), dtype=np.uint8)  # USPS-like 16x16 grey
    y = np.arange(7) % 10
    write_npz_atomic(tmp_path / "usps.npz", x_train=x16, y_train=y, x_test=x16, y_test=y)
    dom = D.load_real_domain("usps", tmp_path)
    assert dom.x.shape == (7, 32, 32, 3) and (dom.y == y).all() and "usps.npz" in dom.provenance
    sub = D.load_real_domain("usps", tmp_path, n=3, seed=0)
    assert sub.x.shape[0] == 3


def test_eval_domains_on_a_trained_checkpoint(make_cfg, tmp_path):
    from autonorm.cli import train

    cfg = make_cfg(
        "norm=ln", "model=vit_micro_conv", "eval.robustness=false", "eval.profile=false", "eval.plots=false",
        "eval.domains=[uci_digits,syn_digits,mnist_m,svhn]", "eval.domain_size=30",
    )
    train(cfg)
    run = Path(cfg.paths.output_dir)
    results = json.loads((run / "results.json").read_text())
    dom = results["domains"]
    assert set(dom) == {"uci_digits", "syn_digits", "mnist_m", "svhn"}
    assert all(0 <= dom[k] <= 1 for k in ("uci_digits", "syn_digits", "mnist_m")) and dom["svhn"] is None
    details = json.loads((run / "robustness.json").read_text())["domains"]
    assert details["svhn"]["status"] == "unavailable" and details["mnist_m"]["n"] == 30
    assert "cifar10" in details["mnist_m"]["provenance"] and "mnist_mini" in details["mnist_m"]["provenance"]

    # the same on the checkpoint with eval.py: identical accuracies (same targets, same weights)
    out = tmp_path / "evalout"
    proc = subprocess.run(
        [sys.executable, "eval.py", f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "eval.robustness=false",
         "eval.profile=false", "eval.plots=false", "eval.save_norm_weights=false",
         "eval.domains=[uci_digits,syn_digits,mnist_m]", "eval.domain_size=30",
         f"hydra.run.dir={out}", f"paths.output_root={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "eval_results.json").read_text())["domains"]
    assert again == {k: dom[k] for k in ("uci_digits", "syn_digits", "mnist_m")}


def test_score_domains_skips_a_model_not_trained_on_mnist():
    from omegaconf import OmegaConf

    from autonorm.eval.domains import score_domains

    class CifarData:
        name = "cifar10_mini"

    with pytest.warns(UserWarning, match="MNIST-trained models only"):
        assert score_domains(torch.nn.Identity(), CifarData(), OmegaConf.create({"domains": ["uci_digits"]})) is None


def test_an_unknown_domain_is_rejected_before_training(make_cfg):
    from autonorm.config import validate

    with pytest.raises(AutoNormError, match="eval.domains has unknown target"):
        validate(make_cfg("eval.domains=[uci_digits,mnist_q]"))


def _res(method, seed, test, doms):
    return {"method": method, "seed": seed, "test_acc": test, "domains": doms}


def test_dg_table_means_stds_and_common_average():
    runs = [
        _res("LN", 0, 0.99, {"uci_digits": 0.5, "mnist_m": 0.3, "svhn": None}),
        _res("LN", 1, 0.98, {"uci_digits": 0.7, "mnist_m": 0.5, "svhn": 0.2}),
        {"status": "completed", "results": _res("AFN", 0, 0.97, {"uci_digits": 0.6, "mnist_m": 0.2, "svhn": None})},
        {"status": "failed", "results": None},
        {"method": "Teacher", "seed": 0, "test_acc": 0.5},  # no domains: not in the section
    ]
    targets, common, rows = dg_rows(runs)
    assert targets == ["uci_digits", "mnist_m", "svhn"] and common == ["uci_digits", "mnist_m"]
    ln = next(r for r in rows if r["method"] == "LN")
    mean, std, n = ln["uci_digits"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(np.std([0.5, 0.7], ddof=1)) and n == 2
    assert ln["average"][0] == pytest.approx(np.mean([0.4, 0.6]))  # per run over uci + mnist_m
    assert ln["svhn"] == (0.2, None, 1)
    md = render_dg(runs)
    assert "| LN | 2 | 98.50 ± 0.71 | 60.00 ± 14.14 | 40.00 ± 14.14 | 20.00 (n=1) | 50.00 ± 14.14 |" in md
    assert "Teacher" not in md and "Average over: uci_digits, mnist_m" in md
    assert render_dg([{"method": "x", "test_acc": 0.1}]) == ""
