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

from conftest import REPO, md_row

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


def _dg_run(folder, method, seed, test, doms, lr=0.001, src="aaaaaaaa11112222"):
    """A fabricated finished MNIST run folder with domain accuracies (``doms`` None: no domains)."""
    import json

    import yaml

    folder.mkdir(parents=True)
    cfg = {"method": method, "seed": seed, "data": {"name": "mnist"}, "model": {"name": "vit_micro_conv"},
           "optim": {"lr": lr}, "trainer": {"max_epochs": 4}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = {"method": method, "seed": seed, "data": "mnist", "model": "vit_micro_conv", "test_acc": test,
           "identity": {"source_hash": src, "git_commit": "0123456789", "git_dirty": False}}
    if doms is not None:
        res["domains"] = doms
    (folder / "results.json").write_text(json.dumps(res))
    (folder / "COMPLETED").write_text("{}")


def test_dg_table_groups_like_the_main_table_and_compares_paired_by_seed(tmp_path):
    from autonorm.pipeline.collect import collect_runs, group_runs

    d = tmp_path / "dg"
    for s, (u, m) in enumerate([(0.5, 0.3), (0.7, 0.5), (0.6, 0.4)]):
        _dg_run(d / f"ln{s}", "LN", s, 0.99 - s / 100, {"uci_digits": u, "mnist_m": m, "svhn": 0.2 if s == 1 else None})
        # AFN is 19-21 points better, seed by seed
        _dg_run(d / f"afn{s}", "AFN", s, 0.97, {"uci_digits": u + 0.19 + s / 100, "mnist_m": m + 0.19 + s / 100, "svhn": None})
    _dg_run(d / "ln_lr", "LN", 0, 0.9, {"uci_digits": 0.1, "mnist_m": 0.1}, lr=0.01)  # another config: own row
    _dg_run(d / "ln_new", "LN", 0, 0.9, {"uci_digits": 0.2, "mnist_m": 0.2}, src="bbbbbbbb33334444")  # other code
    _dg_run(d / "teacher", "Teacher", 0, 0.5, None)  # no domains: not in the section
    rows = group_runs(collect_runs(d))
    targets, common, dg = dg_rows(rows)
    assert targets == ["uci_digits", "mnist_m", "svhn"] and common == ["uci_digits", "mnist_m"]
    by = {r["label"]: r for r in dg}
    assert set(by) == {"AFN", "LN [optim.lr=0.001, code aaaaaaaa]", "LN [optim.lr=0.01, code aaaaaaaa]",
                       "LN [optim.lr=0.001, code bbbbbbbb]"}
    ln = by["LN [optim.lr=0.001, code aaaaaaaa]"]
    assert ln["uci_digits"]["mean"] == pytest.approx(0.6) and ln["uci_digits"]["std"] == pytest.approx(0.1) and ln["n"] == 3
    assert ln["average"]["mean"] == pytest.approx(0.5)  # per run over uci + mnist_m, then over seeds
    assert ln["svhn"] == {"mean": 0.2, "std": None, "n": 1}
    md = render_dg(rows)
    row = md_row(md, "LN [optim.lr=0.001, code aaaaaaaa]")
    assert row["Data"] == "mnist" and row["Model"] == "vit_micro_conv" and row["Epochs"] == "4"
    assert row["Code"] == "aaaaaaaa (git 0123456)" and row["Runs (seeds)"] == "3 (0, 1, 2)"
    assert row["uci_digits (%)"] == "60.00 ± 10.00" and row["svhn (%)"] == "20.00 (n=1)"
    assert md_row(md, "LN [optim.lr=0.01, code aaaaaaaa]")["Target average (%)"] == "10.00 (n=1)"
    assert "Teacher" not in md and "over uci_digits, mnist_m" in md and "no spread" in md
    # paired by seed with Holm over all pairs; only what passes is worded as a finding
    assert "## Paired comparisons of the target average" in md
    comp = next(c for c in md.splitlines() if c.startswith("| AFN | LN [optim.lr=0.001, code aaaaaaaa] |"))
    assert "| 3 | +20.00 |" in comp and comp.rstrip(" |").endswith("AFN higher")
    assert "not testable (1 paired seed)" in md and "1 of 6 comparisons pass" in md
    assert render_dg(group_runs(collect_runs(d / "teacher"))) == ""
