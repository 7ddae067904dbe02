"""Tests of autonorm.viz: plots are written, attention rollout and gate collection are correct."""

from __future__ import annotations

import csv
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

from autonorm import norms
from autonorm.models.vit import VisionTransformer
from autonorm.viz import (
    attention_rollout,
    collect_gate_values,
    plot_attention,
    plot_curves,
    plot_gates,
    plot_grad_heatmap,
    plot_series,
    read_metrics_csv,
)

MIN_BYTES = 1024


def normalize(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - 0.5) / 0.25


def _vit(norm_layer=torch.nn.LayerNorm, depth: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(patch_size=8, embed_dim=16, depth=depth, num_heads=2, norm_layer=norm_layer)


def _images(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _written(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) > MIN_BYTES


@pytest.fixture
def no_warnings():
    """Real plots must not fall back to the warned "no data" placeholder."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def _fake_metrics(path, n_epochs: int = 4, steps_per_epoch: int = 5) -> str:
    """A Lightning-like metrics.csv: train rows and val rows on separate, sparse lines."""
    cols = ["epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc", "tau", "gate/blocks.0.norm1",
            "gate/blocks.0.norm2", "lambda_mu/blocks.0.norm1"]  # fmt: skip
    rows = []
    step = 0
    for e in range(n_epochs):
        for _ in range(steps_per_epoch):
            rows.append({"epoch": e, "step": step, "train/loss": 2.3 * math.exp(-step / 10),
                         "train/acc": min(1, 0.1 + step / 25), "tau": max(0.1, 1 - step / 20),
                         "gate/blocks.0.norm1": 0.5 + step / 50, "gate/blocks.0.norm2": 0.5 - step / 60})  # fmt: skip
            step += 1
        rows.append({"epoch": e, "step": step - 1, "val/loss": 2.0 - 0.3 * e, "val/acc": 0.2 + 0.1 * e,
                     "lambda_mu/blocks.0.norm1": 0.05 + 0.01 * e})  # fmt: skip
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_read_metrics_csv_tolerates_sparse_rows(tmp_path) -> None:
    data = read_metrics_csv(_fake_metrics(tmp_path / "metrics.csv"))
    assert len(data["step"]) == 24
    assert np.isnan(data["val/acc"]).sum() == 20 and np.isfinite(data["val/acc"]).sum() == 4
    with pytest.warns(UserWarning):
        assert read_metrics_csv(tmp_path / "missing.csv") == {}
    # a run folder: the metrics.csv below it is found
    assert "step" in read_metrics_csv(tmp_path)


def test_plot_curves(tmp_path) -> None:
    csv_path = _fake_metrics(tmp_path / "metrics.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = plot_curves(csv_path, tmp_path / "figs" / "curves.png")
    assert _written(out)
    # missing columns: a warning and a placeholder, never an exception
    with open(tmp_path / "other.csv", "w") as fh:
        fh.write("step,foo\n0,1\n1,\n")
    with pytest.warns(UserWarning):
        assert os.path.isfile(plot_curves(tmp_path / "other.csv", tmp_path / "none.png"))
    with pytest.warns(UserWarning):
        assert os.path.isfile(plot_curves(tmp_path / "absent.csv", tmp_path / "absent.png"))


def test_attention_rollout_rows_sum_to_one() -> None:
    model = _vit(depth=3)
    maps = model.get_attention_maps(normalize(_images(4).float() / 255))
    roll = attention_rollout(maps)
    assert roll.shape == (4, 16)
    assert torch.allclose(roll.sum(dim=1), torch.ones(4), atol=1e-5)
    assert (roll >= 0).all()
    # uniform attention rolls out to a uniform map over the patches
    n = 17
    uniform = [torch.full((2, 3, n, n), 1.0 / n) for _ in range(3)]
    assert torch.allclose(attention_rollout(uniform), torch.full((2, n - 1), 1.0 / (n - 1)), atol=1e-6)
    # one layer by hand: (A + I) / 2, class row over patches, renormalised
    a = torch.softmax(torch.randn(1, 2, 5, 5), dim=-1)
    fused = (a.mean(1) + torch.eye(5)) / 2
    expect = fused[:, 0, 1:] / fused[:, 0, 1:].sum()
    assert torch.allclose(attention_rollout([a]), expect, atol=1e-6)
    with pytest.raises(ValueError):
        attention_rollout([])


def test_plot_attention(tmp_path, no_warnings) -> None:
    model = _vit()
    model.train()
    out = plot_attention(model, _images(3), normalize, tmp_path / "attn.png")
    assert _written(out) and model.training


def test_plot_grad_heatmap(tmp_path) -> None:
    grads = {
        "blocks.0.attn.qkv": [1e-3, 2e-3, 5e-3, 1e-2],
        "blocks.0.mlp.fc1": [1e-1, 0.0, 3e-1],  # shorter row, a zero: both shown blank
        "head": [1.0, 2.0, 0.5, 0.1],
    }
    arr = np.abs(np.random.default_rng(0).normal(size=(5, 40))) + 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert _written(plot_grad_heatmap(grads, tmp_path / "g1.png", steps=[0, 10, 20, 30]))
        assert _written(plot_grad_heatmap(arr, tmp_path / "g2.png", layer_names=[f"l{i}" for i in range(5)]))
        # GradNormRecorder's JSON file: {"steps": [...], "layers": {name: [...]}}
        (tmp_path / "grad_norms.json").write_text(json.dumps({"steps": [0, 10, 20, 30], "layers": grads}))
        assert _written(plot_grad_heatmap(tmp_path / "grad_norms.json", tmp_path / "g4.png"))
        assert _written(plot_grad_heatmap(str(tmp_path / "grad_norms.json"), tmp_path / "g5.png"))
    with pytest.warns(UserWarning):
        assert os.path.isfile(plot_grad_heatmap({}, tmp_path / "g3.png"))
    with pytest.warns(UserWarning):
        assert os.path.isfile(plot_grad_heatmap(tmp_path / "missing.json", tmp_path / "g6.png"))


def test_collect_gate_values_and_plot_gates(tmp_path) -> None:
    model = _vit(norm_layer=norms.AutoNorm)
    images = _images(10)
    labels = torch.arange(10) % 3
    gates = collect_gate_values(model, images, normalize, batch_size=4)
    names = [name for name, _ in model.norm_points()]
    assert list(gates) == names
    for values in gates.values():
        assert values.shape == (10,)
        assert ((values > 0) & (values < 1)).all()
    # per-sample gates do not depend on the batch they were computed in
    single = collect_gate_values(model, images, normalize, batch_size=1)
    for name in names:
        assert torch.allclose(gates[name], single[name], atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = plot_gates(gates, labels, ["airplane", "cat", "dog"], tmp_path / "gates.png")
    assert _written(out)
    with pytest.warns(UserWarning):
        assert collect_gate_values(_vit(), images, normalize) == {}
    with pytest.warns(UserWarning):
        assert os.path.isfile(plot_gates({}, labels, None, tmp_path / "empty.png"))


def test_plot_series(tmp_path, no_warnings) -> None:
    csv_path = _fake_metrics(tmp_path / "metrics.csv")
    assert _written(plot_series(csv_path, "tau", tmp_path / "tau.png", title="Gumbel temperature"))
    assert _written(plot_series(csv_path, "gate/", tmp_path / "gates.png"))
    assert _written(plot_series(csv_path, ("lambda_mu/", "lambda_sigma/"), tmp_path / "afn.png"))
    series = {"step": [0, 1, 2, 3], "tau": [1.0, 0.7, 0.5, 0.3], "gate/norm": ([0, 2], [0.4, 0.6])}
    assert _written(plot_series(series, ("tau", "gate/"), tmp_path / "dict.png", logy=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert os.path.isfile(plot_series(csv_path, "nothing/", tmp_path / "none.png"))
    assert any(issubclass(w.category, UserWarning) for w in caught)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, to look at what they draw."""
    from autonorm.viz import plots

    saved = []
    real_save = plots._save

    def keep(fig, out_png):
        saved.append(fig)
        return real_save(fig, out_png)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


def test_every_figure_names_its_run_and_tau_has_its_own_axis(tmp_path, figures) -> None:
    run = "AutoNorm-gumbel · seed 0 · mnist_mini · vit_micro"
    csv_path = _fake_metrics(tmp_path / "metrics.csv")
    vit = _vit(norms.AutoNorm)
    imgs = _images(4)
    plot_curves(csv_path, tmp_path / "c.png", run=run)
    plot_series(csv_path, ("gate/", "tau"), tmp_path / "s.png", "gates", own_axis=("tau",), run=run)
    plot_attention(vit, imgs, normalize, tmp_path / "a.png", run=run)
    plot_grad_heatmap({"blocks.0": [1.0, 0.5], "head": [2.0, 1.0]}, tmp_path / "g.png", run=run)
    plot_gates(collect_gate_values(vit, imgs, normalize), torch.tensor([0, 1, 0, 1]), ["a", "b"], tmp_path / "w.png", run=run)
    assert len(figures) == 5 and all(run in fig._suptitle.get_text() for fig in figures)
    series_fig = figures[1]
    lines = [[line.get_label() for line in ax.get_lines()] for ax in series_fig.axes]
    assert lines == [["gate/blocks.0.norm1", "gate/blocks.0.norm2"], ["tau"]]
    # the gate heatmap's rows are named once, on the left panel (no overlapping labels)
    gates_fig = figures[4]
    assert not [t for t in gates_fig.axes[1].get_yticklabels() if t.get_text()]
    # a rollout map's colour scale is centred on uniform attention and shared by all images
    maps = [im for ax in figures[2].axes for im in ax.get_images() if im.get_cmap().name == "RdBu_r"]
    assert len(maps) == 4 and len({id(im.norm) for im in maps}) == 1 and maps[0].norm.vcenter == 1.0
