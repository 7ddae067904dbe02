"""Figures for AutoNorm runs (matplotlib, Agg canvas; no pyplot global state).

Every ``plot_*`` function writes one PNG, creates its parent folder, and returns the path. None
of them raises on missing or empty data: absent columns or series are skipped with a
``UserWarning`` and, if nothing at all is left to draw, the PNG says "no data".

* :func:`plot_curves` -- accuracy and loss curves from a Lightning ``metrics.csv``;
* :func:`attention_rollout` / :func:`plot_attention` -- class-token attention rollout
  (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers") over test images;
* :func:`plot_grad_heatmap` -- gradient norm per layer over training steps (log colour scale);
* :func:`collect_gate_values` / :func:`plot_gates` -- AutoNorm's per-sample gate per norm point
  and per class;
* :func:`plot_series` -- any logged scalars by column prefix (Gumbel temperature ``tau``,
  ``gate/...``, AFN's ``lambda_mu/...``).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import textwrap
import warnings
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.figure import Figure
from torch import nn

__all__ = [
    "attention_rollout",
    "collect_gate_values",
    "plot_attention",
    "plot_curves",
    "plot_gates",
    "plot_grad_heatmap",
    "plot_series",
    "plot_time_to_accuracy",
    "read_metrics_csv",
]

PathLike = Union[str, "os.PathLike[str]"]
Normalize = Callable[[torch.Tensor], torch.Tensor]
_X_KEYS = ("step", "epoch")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _warn(msg: str) -> None:
    warnings.warn(msg, UserWarning, stacklevel=3)


def _new_figure(width: float, height: float) -> Figure:
    # constrained layout keeps titles, labels, legends and colour bars inside the canvas
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, title: Optional[str], run: Optional[str]) -> None:
    """The figure's title and, on a line below, the run it belongs to (wrapped, never clipped)."""
    lines = [t for t in (title, "\n".join(textwrap.wrap(run, 100)) if run else None) if t]
    if lines:
        fig.suptitle("\n".join(lines), fontsize=10)


def _save(fig: Figure, out_png: PathLike) -> str:
    path = os.fspath(out_png)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi, bbox_inches="tight")
    return path


def _placeholder(out_png: PathLike, title: str, reason: str, run: Optional[str] = None) -> str:
    fig = _new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, f"no data\n{reason}", ha="center", va="center", wrap=True)
    _title(fig, title, run)
    ax.set_axis_off()
    return _save(fig, out_png)


def _to_float(value: str) -> float:
    try:
        return float(value) if value not in ("", None) else math.nan
    except ValueError:
        return math.nan


def read_metrics_csv(path: PathLike) -> dict[str, np.ndarray]:
    """Columns of a Lightning CSVLogger ``metrics.csv`` as float arrays (blank cells -> NaN).

    ``path`` may be the file or a run folder (the newest ``**/metrics.csv`` below it is used).
    Returns ``{}`` (with a warning) if no file is found or it is empty.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "metrics.csv"), recursive=True), key=os.path.getmtime)
        if not found:
            _warn(f"no metrics.csv under {path}")
            return {}
        path = found[-1]
    if not os.path.isfile(path):
        _warn(f"metrics file not found: {path}")
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        _warn(f"{path} has no rows")
        return {}
    columns = [c for c in rows[0].keys() if c is not None]
    return {c: np.array([_to_float(r.get(c, "")) for r in rows], dtype=float) for c in columns}


def _x_axis(data: Mapping[str, np.ndarray], n: int) -> tuple[str, np.ndarray]:
    for key in _X_KEYS:
        if key in data and np.isfinite(data[key]).any():
            return key, np.asarray(data[key], dtype=float)
    return "row", np.arange(n, dtype=float)


def _series(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop rows where y is NaN (Lightning's sparse rows); fill missing x by row order."""
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    keep = np.isfinite(y)
    if not np.isfinite(x[keep]).all():  # e.g. a NaN step: fall back to the row index
        x = np.arange(len(y), dtype=float)
    return x[keep], y[keep]


# --------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------


def plot_curves(metrics_csv: PathLike, out_png: PathLike, title: Optional[str] = "accuracy and loss", run: Optional[str] = None) -> str:
    """Accuracy (left) and loss (right) curves of every train/val/test column vs step.

    Columns whose name contains ``acc`` / ``loss`` (e.g. ``train/acc``, ``val/loss``,
    ``train/loss_epoch``) are plotted against ``step`` (``epoch`` or the row index if absent);
    blank cells (Lightning logs train and val on separate rows) are dropped per column.
    """
    data = read_metrics_csv(metrics_csv)
    if not data:
        return _placeholder(out_png, title or "training curves", f"no metrics in {metrics_csv}", run)
    n = len(next(iter(data.values())))
    xname, x = _x_axis(data, n)
    panels = {"accuracy": [c for c in data if "acc" in c.lower()], "loss": [c for c in data if "loss" in c.lower()]}
    if not any(panels.values()):
        _warn(f"{metrics_csv}: no accuracy or loss columns (columns: {sorted(data)})")
        return _placeholder(out_png, title or "training curves", "no accuracy / loss columns", run)
    fig = _new_figure(11, 4)
    for i, (label, cols) in enumerate(panels.items()):
        ax = fig.add_subplot(1, 2, i + 1)
        drawn = 0
        for col in sorted(cols):
            xs, ys = _series(x, data[col])
            if len(ys) == 0:
                continue
            style = "o-" if len(ys) <= 50 else "-"
            ax.plot(xs, ys, style, markersize=3, linewidth=1.2, label=col)
            drawn += 1
        if drawn == 0:
            _warn(f"{metrics_csv}: no {label} values to plot")
            ax.text(0.5, 0.5, f"no {label} data", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8)
        ax.set_xlabel(xname)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    _title(fig, title, run)
    return _save(fig, out_png)


# --------------------------------------------------------------------------------------------
# attention rollout
# --------------------------------------------------------------------------------------------


def attention_rollout(maps: Sequence[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Class-token attention rollout (Abnar & Zuidema, 2020).

    For every layer: fuse heads (``mean``, or ``max``/``min``), add the identity for the
    residual connection and renormalise the rows, ``A_l = (W_l + I) / rowsum``; the rollout is
    ``A_L @ ... @ A_1``. Returns the class token's row over the patch tokens, renormalised to
    sum to 1: (B, N - 1).

    Args:
        maps: one (B, heads, N, N) softmax attention per block, in forward order (token 0 = class).
    """
    if len(maps) == 0:
        raise ValueError("attention_rollout needs at least one attention map")
    rollout: Optional[torch.Tensor] = None
    for attn in maps:
        if attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
            raise ValueError(f"expected (B, heads, N, N) attention, got {tuple(attn.shape)}")
        a = attn.detach().float()
        if head_fusion == "mean":
            a = a.mean(dim=1)
        elif head_fusion == "max":
            a = a.amax(dim=1)
        elif head_fusion == "min":
            a = a.amin(dim=1)
        else:
            raise ValueError(f"head_fusion must be mean, max or min, got {head_fusion!r}")
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    assert rollout is not None
    cls = rollout[:, 0, 1:]
    return cls / cls.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def _np1d(v: object) -> np.ndarray:
    """Any tensor / array / sequence of numbers -> 1D float64 numpy array."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().double().numpy().ravel()
    return np.asarray(v, dtype=float).ravel()


def _to_float01(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def plot_attention(
    model: nn.Module,
    images_uint8: torch.Tensor,
    normalize: Normalize,
    out_png: PathLike,
    grid_size: Optional[int] = None,
    max_images: int = 8,
    titles: Optional[Sequence[str]] = None,
    run: Optional[str] = None,
) -> str:
    """The attention rollout of a few images (top row: image, bottom row: its rollout map).

    ``model.get_attention_maps(normalize(x01))`` must return (B, heads, N, N) maps (the
    :class:`~autonorm.models.vit.VisionTransformer` API). The rollout over the ``N - 1`` patches
    is reshaped to ``grid_size x grid_size`` (default ``sqrt(N - 1)``) and shown per patch as a
    multiple of uniform attention (1 = every patch the same) on one diverging colour scale
    centred at 1 and shared by all images (red above, blue below uniform; a colour bar), so maps
    can be compared across images and, with the same fixed test images, across methods.
    """
    if images_uint8 is None or len(images_uint8) == 0:
        _warn("plot_attention: no images")
        return _placeholder(out_png, "attention rollout", "no images", run)
    if not hasattr(model, "get_attention_maps"):
        _warn(f"plot_attention: {type(model).__name__} has no get_attention_maps()")
        return _placeholder(out_png, "attention rollout", "model exposes no attention maps", run)
    x01 = _to_float01(images_uint8[:max_images].cpu())
    b, _, h, w = x01.shape
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.get_attention_maps(normalize(x01).to(_model_device(model)))
    finally:
        model.train(was_training)
    roll = attention_rollout([m.cpu() for m in maps])  # (B, N - 1)
    g = grid_size or int(round(math.sqrt(roll.shape[1])))
    if g * g != roll.shape[1]:
        raise ValueError(f"{roll.shape[1]} patch tokens do not form a {g}x{g} grid")
    rel = (roll * roll.shape[1]).view(b, g, g).numpy()  # 1.0 = uniform attention over the patches
    # diverging around uniform, one scale for all images: red above, blue below uniform
    scale = TwoSlopeNorm(vcenter=1.0, vmin=float(min(rel.min(), 0.99)), vmax=float(max(rel.max(), 1.01)))
    fig = _new_figure(1.5 * b + 1.2, 3.9)
    axes = fig.subplots(2, b, squeeze=False)
    for i in range(b):
        img = x01[i].permute(1, 2, 0).clamp(0, 1).numpy()
        top, bottom = axes[0][i], axes[1][i]
        top.imshow(img, interpolation="nearest")
        top.set_axis_off()
        if titles is not None and i < len(titles):
            top.set_title(str(titles[i]), fontsize=8)
        im = bottom.imshow(rel[i], cmap="RdBu_r", norm=scale, interpolation="nearest", extent=(0, w, h, 0))
        bottom.set_axis_off()
    fig.colorbar(im, ax=list(axes[1]), shrink=0.9, label="attention / uniform")
    _title(fig, "attention rollout of the class token per patch (1 = uniform)", run)
    return _save(fig, out_png)


# --------------------------------------------------------------------------------------------
# gradient norms
# --------------------------------------------------------------------------------------------


def plot_grad_heatmap(
    grad_norms: Union[Mapping[str, object], np.ndarray, torch.Tensor, PathLike],
    out_png: PathLike,
    layer_names: Optional[Sequence[str]] = None,
    steps: Optional[Sequence[float]] = None,
    title: str = "gradient norm per layer",
    run: Optional[str] = None,
) -> str:
    """Heatmap of gradient norms, layers as rows and training steps as columns, log colours.

    ``grad_norms`` is one of: ``{layer: [norm per logged step]}`` (rows in insertion order;
    shorter rows are padded with NaN at the end); the recorder format
    ``{"steps": [...], "layers": {layer: [...]}}``; a path to a JSON file holding either; or a 2D
    array (layers, steps) with ``layer_names``. Non-positive and non-finite entries are shown
    blank. ``steps`` labels the columns (default: the recorder's steps, else 0, 1, ...).
    """
    if isinstance(grad_norms, (str, os.PathLike)):
        try:
            with open(grad_norms) as fh:
                grad_norms = json.load(fh)
        except (OSError, ValueError) as exc:
            _warn(f"plot_grad_heatmap: cannot read {os.fspath(grad_norms)}: {exc}")
            return _placeholder(out_png, title, "unreadable gradient-norm file", run)
    if isinstance(grad_norms, Mapping) and isinstance(grad_norms.get("layers"), Mapping):
        if steps is None and grad_norms.get("steps") is not None:
            steps = list(grad_norms["steps"])
        grad_norms = grad_norms["layers"]
    if isinstance(grad_norms, Mapping):
        names = [str(k) for k in grad_norms]
        rows = [np.asarray(list(v), dtype=float).ravel() for v in grad_norms.values()]
        width = max((len(r) for r in rows), default=0)
        mat = np.full((len(rows), width), np.nan)
        for i, r in enumerate(rows):
            mat[i, : len(r)] = r
    else:
        arr = grad_norms.detach().cpu().numpy() if isinstance(grad_norms, torch.Tensor) else np.asarray(grad_norms)
        mat = np.asarray(arr, dtype=float)
        if mat.ndim == 1:
            mat = mat[None, :]
        if mat.ndim != 2:
            _warn(f"plot_grad_heatmap: expected a 2D array, got shape {mat.shape}")
            return _placeholder(out_png, title, "grad norms are not 2D", run)
        names = [str(n) for n in layer_names] if layer_names is not None else []
        if len(names) != mat.shape[0]:
            if layer_names is not None:
                _warn(f"plot_grad_heatmap: {len(names)} layer names for {mat.shape[0]} rows; using indices")
            names = [f"layer {i}" for i in range(mat.shape[0])]
    valid = np.isfinite(mat) & (mat > 0)
    if mat.size == 0 or not valid.any():
        _warn("plot_grad_heatmap: no positive finite gradient norms")
        return _placeholder(out_png, title, "no positive gradient norms", run)
    masked = np.ma.masked_where(~valid, mat)
    vmin, vmax = float(mat[valid].min()), float(mat[valid].max())
    if vmax <= vmin:
        vmax = vmin * 10.0
    n_layers, n_steps = mat.shape
    fig = _new_figure(min(4 + 0.08 * n_steps, 16), min(2 + 0.22 * n_layers, 30))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(masked, aspect="auto", interpolation="nearest", cmap="viridis", norm=LogNorm(vmin=vmin, vmax=vmax))
    fig.colorbar(im, ax=ax, label="gradient norm (log)")
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels(names, fontsize=max(4, min(8, int(400 / max(n_layers, 1)))))
    if steps is not None and len(steps) == n_steps:
        ticks = np.linspace(0, n_steps - 1, num=min(n_steps, 8)).round().astype(int)
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{steps[t]:g}" for t in ticks])
        ax.set_xlabel("step")
    else:
        ax.set_xlabel("logged step index")
    _title(fig, title, run)
    return _save(fig, out_png)


# --------------------------------------------------------------------------------------------
# AutoNorm gates
# --------------------------------------------------------------------------------------------


def _gated_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a ``last_gate`` attribute: the model's norm points if it has them, else all."""
    if hasattr(model, "norm_points"):
        found = [(n, m) for n, m in model.norm_points() if hasattr(m, "last_gate")]
        if found:
            return found
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "last_gate")]


def collect_gate_values(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Normalize,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per-sample gate of every AutoNorm norm point: ``{name: (N,) float tensor on CPU}``.

    Runs the model in eval mode (restored afterwards) under ``torch.no_grad`` on ``images``
    (uint8 or float in [0, 1], (N, 3, H, W)), reading each module's ``last_gate`` after every
    batch. Returns ``{}`` (with a warning) if the model has no module with ``last_gate``.
    """
    gated = _gated_modules(model)
    if not gated:
        _warn(f"collect_gate_values: {type(model).__name__} has no module with last_gate")
        return {}
    dev = _model_device(model)
    out: dict[str, list[torch.Tensor]] = {name: [] for name, _ in gated}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], int(batch_size)):
                xb = normalize(_to_float01(images[i : i + batch_size].cpu())).to(dev)
                model(xb)
                bsz = xb.shape[0]
                for name, m in gated:
                    g = m.last_gate
                    if g is None:
                        raise RuntimeError(f"{name}.last_gate is None after a forward pass")
                    g = torch.as_tensor(g).detach().float().cpu().reshape(-1)
                    if g.numel() == 1:
                        g = g.expand(bsz)
                    if g.numel() != bsz:
                        raise RuntimeError(f"{name}.last_gate has {g.numel()} values for a batch of {bsz}")
                    out[name].append(g.clone())
    finally:
        model.train(was_training)
    return {name: torch.cat(vals) if vals else torch.empty(0) for name, vals in out.items()}


def plot_gates(
    gate_values: Mapping[str, Union[torch.Tensor, np.ndarray, Sequence[float]]],
    labels: Union[torch.Tensor, np.ndarray, Sequence[int]],
    classes: Optional[Sequence[str]],
    out_png: PathLike,
    title: str = "AutoNorm gate (weight of LayerNorm)",
    run: Optional[str] = None,
) -> str:
    """Gate statistics per norm point: distribution (left) and mean per class (right).

    Left: box plot of the per-sample gate ``a`` (1 = LayerNorm, 0 = DyT) of each norm point with
    its mean marked. Right: heatmap norm point x class of the mean gate (blank where a class has
    no sample). ``labels`` are the samples' class indices, ``classes`` their names (or None).
    """
    names = [str(k) for k in gate_values]
    if not names:
        _warn("plot_gates: no gate values (is the model an AutoNorm model?)")
        return _placeholder(out_png, title, "no gate values", run)
    vals = [_np1d(v) for v in gate_values.values()]
    lab = _np1d(labels).astype(int) if labels is not None else None
    n = len(vals[0])
    if any(len(v) != n for v in vals) or n == 0:
        _warn("plot_gates: norm points have different (or zero) numbers of samples")
        return _placeholder(out_png, title, "inconsistent gate values", run)
    k = int(max(lab.max() + 1 if lab is not None and lab.size else 0, len(classes) if classes else 0))
    heat = None
    if lab is None or len(lab) != n:
        _warn(f"plot_gates: {0 if lab is None else len(lab)} labels for {n} samples; skipping the per-class map")
    elif k > 0:
        heat = np.full((len(names), k), np.nan)
        for j in range(k):
            sel = lab == j
            if sel.any():
                heat[:, j] = [v[sel].mean() for v in vals]
    class_names = [str(c) for c in classes] if classes and len(classes) >= k else [str(j) for j in range(k)]
    fig = _new_figure(13 if heat is not None else 7, max(3.5, 0.35 * len(names) + 1.5))
    ax = fig.add_subplot(1, 2 if heat is not None else 1, 1)
    try:
        ax.boxplot(vals, orientation="horizontal", showfliers=False)
    except TypeError:  # matplotlib < 3.10
        ax.boxplot(vals, vert=False, showfliers=False)
    ax.plot([v.mean() for v in vals], range(1, len(names) + 1), "r^", label="mean")
    ax.set_yticks(range(1, len(names) + 1))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("gate a (1 = LayerNorm, 0 = DyT)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    if heat is not None:
        ax2 = fig.add_subplot(1, 2, 2)
        im = ax2.imshow(np.ma.masked_invalid(heat), aspect="auto", cmap="coolwarm", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax2, label="mean gate")
        ax2.set_yticks(range(len(names)))
        ax2.tick_params(labelleft=False)  # the same rows as the left panel, named there
        ax2.set_xticks(range(k))
        ax2.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
        if heat.size <= 300:
            for (r, c_), v in np.ndenumerate(heat):
                if np.isfinite(v):
                    ax2.text(c_, r, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax2.set_title("mean gate per class", fontsize=10)
    ax.set_title("per-sample gate", fontsize=10)
    _title(fig, title, run)
    return _save(fig, out_png)


# --------------------------------------------------------------------------------------------
# generic series
# --------------------------------------------------------------------------------------------


def plot_series(
    csv_or_dict: Union[PathLike, Mapping[str, object]],
    keys_prefix: Union[str, Sequence[str]],
    out_png: PathLike,
    title: Optional[str] = None,
    logy: bool = False,
    own_axis: Sequence[str] = (),
    run: Optional[str] = None,
) -> str:
    """Plot every series whose name starts with ``keys_prefix`` (one prefix or several) vs step.

    Series whose name starts with one of ``own_axis`` (e.g. ``"tau"`` beside the gates) are drawn
    on a second panel below, with its own y axis and the same steps.

    ``csv_or_dict``: a Lightning ``metrics.csv`` (or run folder), or a dict. In a dict, a value is
    a sequence of numbers (x = ``dict["step"]`` if present with the same length, else 0, 1, ...)
    or a pair ``(xs, ys)``. Examples: ``"tau"`` (Gumbel temperature), ``"gate/"`` (mean gate per
    norm point), ``("lambda_mu/", "lambda_sigma/")`` (AFN). Blank / NaN points are dropped.
    """
    prefixes = (keys_prefix,) if isinstance(keys_prefix, str) else tuple(keys_prefix)
    label = title or ", ".join(prefixes)
    if isinstance(csv_or_dict, Mapping):
        data = dict(csv_or_dict)
    else:
        data = read_metrics_csv(csv_or_dict)  # type: ignore[arg-type]
    step = data.get("step")
    step_arr = np.asarray(step, dtype=float).ravel() if step is not None and not isinstance(step, tuple) else None
    series: list[tuple[str, np.ndarray, np.ndarray]] = []
    for key in sorted(data):
        if key in _X_KEYS or not any(str(key).startswith(p) for p in prefixes):
            continue
        value = data[key]
        try:
            if isinstance(value, tuple) and len(value) == 2:
                xs, ys = np.asarray(value[0], dtype=float).ravel(), np.asarray(value[1], dtype=float).ravel()
            else:
                ys = _np1d(value)
                xs = step_arr if step_arr is not None and len(step_arr) == len(ys) else np.arange(len(ys), dtype=float)
        except (TypeError, ValueError):
            _warn(f"plot_series: {key!r} is not numeric; skipped")
            continue
        if len(xs) != len(ys):
            _warn(f"plot_series: {key!r} has {len(xs)} x values for {len(ys)} y values; skipped")
            continue
        xs, ys = _series(xs, ys)
        if len(ys):
            series.append((str(key), xs, ys))
    if not series:
        _warn(f"plot_series: no data for prefix {prefixes}")
        return _placeholder(out_png, label, f"no series starting with {prefixes}", run)
    own = tuple(own_axis)
    groups = [[s for s in series if not s[0].startswith(own)] if own else series, [s for s in series if own and s[0].startswith(own)]]
    groups = [grp for grp in groups if grp]
    fig = _new_figure(9, 4.5 if len(groups) == 1 else 6.0)
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False, height_ratios=[3, 1.4][: len(groups)])[:, 0]
    for ax, group in zip(axes, groups):
        for (name, xs, ys), color in zip(group, _series_colors(len(group))):
            style = "o-" if len(ys) <= 30 else "-"
            ax.plot(xs, ys, style, markersize=3, linewidth=1.2, label=name, color=color)
        if logy:
            if all((ys > 0).all() for _, _, ys in group):
                ax.set_yscale("log")
            else:
                _warn("plot_series: non-positive values, keeping a linear y axis")
        if len(group) == 1:
            ax.set_ylabel(group[0][0])
        elif len(group) <= 24:  # beside the plot, so it never covers a line
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=2 if len(group) > 12 else 1)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    _title(fig, label, run)
    return _save(fig, out_png)


def _series_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    if n <= 10:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def plot_time_to_accuracy(
    curves: Mapping[str, PathLike],
    out_png: PathLike,
    targets: Sequence[tuple[float, float, str]] = (),
    title: str = "Test accuracy against training time",
) -> str:
    """One line per run from its ``time_to_accuracy.csv`` (train_time_s, test_acc).

    ``targets``: ``(accuracy, seconds, label)`` boxes drawn as dashed lines, e.g. ``(0.99, 300, "99% in 5 min")``.
    """
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for name, path in curves.items():
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            xs = [float(r["train_time_s"]) / 60 for r in rows]
            ys = [100 * float(r["test_acc"]) for r in rows]
        except (OSError, KeyError, ValueError) as exc:
            _warn(f"time-to-accuracy curve {name!r} unreadable ({exc}); skipped")
            continue
        ax.plot(xs, ys, marker="o", label=name)
        drawn += 1
    for acc, seconds, label in targets:
        ax.axhline(100 * acc, color="grey", ls="--", lw=0.8)
        ax.axvline(seconds / 60, color="grey", ls=":", lw=0.8)
        ax.text(seconds / 60, 100 * acc, f" {label}", fontsize=8, va="bottom")
    if not drawn:
        return _placeholder(out_png, title, "no curves")
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)
