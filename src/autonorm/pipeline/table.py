"""Baseline table from finished run folders.

Reads only what training runs leave on disk (``results.json``, ``COMPLETED``, ``FAILED``, ``.hydra/``;
see the "Run folder" section of the interface contract) and writes, atomically:

- ``summary_results.csv``: one row per run (raw numbers, accuracies as fractions 0..1),
- ``summary_results.md``: one row per method (mean ± sample std over seeds, accuracies in %), then the
  failed / unfinished jobs with their errors,
- ``summary_results.png``: bar plot of the test accuracy per method with std error bars.

Missing values (``null`` or absent in ``results.json``) stay empty: nothing is ever filled in.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from .io import COMPLETED, FAILED, atomic_path, atomic_write_text

__all__ = [
    "RESULTS_NAME",
    "COLUMNS",
    "METRICS",
    "TablePaths",
    "collect_runs",
    "build_table",
    "render_markdown",
    "write_table",
    "corruption_table",
    "render_corruptions",
]

RESULTS_NAME = "results.json"
CSV_NAME = "summary_results.csv"
MD_NAME = "summary_results.md"
PNG_NAME = "summary_results.png"

#: Folders never searched for runs (besides hidden ones such as ``.hydra``/``.submitit``).
SKIP_DIRS = frozenset({"checkpoints", "wandb", "__pycache__"})

#: (column, results.json key, display kind)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("Val Acc", "val_acc", "acc"),
    ("Test Acc", "test_acc", "acc"),
    ("Latency (ms/sample)", "latency_ms_per_sample", "float"),
    ("FLOPs (per sample)", "flops_per_sample", "si"),
    ("Params", "params", "int"),
    ("Noise Acc", "noise_acc", "acc"),
    ("Rotation Acc", "rotation_acc", "acc"),
    ("Train time (s)", "train_time_s", "time"),
)
METRIC_COLUMNS = tuple(m[0] for m in METRICS)
COLUMNS = ("Method", "Seed", *METRIC_COLUMNS, "Status", "Error")
CSV_COLUMNS = (*COLUMNS, "Run")

ERROR_MAX_CHARS = 200


class TablePaths(NamedTuple):
    """Paths written by :func:`write_table`."""

    csv: Path
    md: Path
    png: Path


# --------------------------------------------------------------------------------------------------
# collecting runs
# --------------------------------------------------------------------------------------------------


def _num(v: Any) -> float | int | None:
    """A finite number, or None (null, bools, strings, NaN and inf count as missing)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _summarise_error(text: str) -> str:
    """One line of an error text, at most 200 characters.

    The first non-empty line; for a Python traceback (whose first line says nothing) the last one,
    which holds the exception.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "FAILED (no error text)"
    line = lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]
    if len(line) > ERROR_MAX_CHARS:
        line = line[: ERROR_MAX_CHARS - 1] + "…"
    return line


def _load_yaml(path: Path) -> Any:
    try:
        import yaml  # PyYAML ships with Hydra/OmegaConf; optional here
    except ImportError:  # pragma: no cover
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None


def _hydra_info(run: Path) -> dict[str, Any]:
    """Best-effort method / seed of a run from ``config.yaml``, ``.hydra/config.yaml``, ``.hydra/overrides.yaml``.

    Used only for runs without a readable ``results.json`` (failed / unfinished jobs).
    """
    info: dict[str, Any] = {}
    # the run's own resolved config.yaml names the method even when it was derived, not set
    cfg = _load_yaml(run / "config.yaml")
    if not (isinstance(cfg, dict) and cfg.get("method")):
        cfg = _load_yaml(run / ".hydra" / "config.yaml")
    if isinstance(cfg, dict):
        m = cfg.get("method")
        if isinstance(m, dict):
            m = m.get("name")
        if isinstance(m, str) and m:
            info["method"] = m
        if isinstance(cfg.get("seed"), int) and not isinstance(cfg.get("seed"), bool):
            info["seed"] = cfg["seed"]
    overrides = _load_yaml(run / ".hydra" / "overrides.yaml")
    if isinstance(overrides, list):
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                continue
            k, v = item.split("=", 1)
            k = k.lstrip("+~")
            if k in ("method", "method.name") and "method" not in info:
                info["method"] = v
            elif k == "seed" and "seed" not in info:
                try:
                    info["seed"] = int(v)
                except ValueError:
                    pass
    return info


def _read_run(run: Path, root: Path) -> dict[str, Any]:
    rel = os.path.relpath(run, root)
    res_path = run / RESULTS_NAME
    results: dict | None = None
    results_error: str | None = None
    if res_path.is_file():
        try:
            obj = json.loads(res_path.read_text(encoding="utf-8"))
            if isinstance(obj, dict):
                results = obj
            else:
                results_error = f"results.json is not a JSON object ({type(obj).__name__})"
        except (OSError, json.JSONDecodeError) as exc:
            results_error = f"unreadable results.json: {exc}"

    completed = (run / COMPLETED).is_file()
    failed = (run / FAILED).is_file()
    error = ""
    if completed and results is not None:
        status = "completed"
    elif failed:
        status = "failed"
        try:
            error = _summarise_error((run / FAILED).read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            error = f"unreadable FAILED marker: {exc}"
    elif completed and results_error:
        status, error = "failed", _summarise_error(results_error)
    elif completed:
        status, error = "unfinished", "COMPLETED marker but no results.json"
    else:
        status = "unfinished"

    info = _hydra_info(run)
    method = None
    seed = None
    if results is not None:
        method = results.get("method")
        seed = results.get("seed")
    if not isinstance(method, str) or not method:
        method = info.get("method")
    if isinstance(seed, bool) or not isinstance(seed, int):
        seed = info.get("seed")
    return {
        "run_dir": str(run.resolve()),
        "rel": rel,
        "status": status,
        "error": error,
        "method": method if method else "unknown",
        "seed": seed,
        "results": results if status == "completed" else None,
    }


def collect_runs(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Find every run folder under ``sweep_dir`` (recursively, including ``sweep_dir`` itself).

    A run folder holds ``.hydra/``, ``results.json``, ``FAILED`` or ``COMPLETED``; ``checkpoints/``,
    ``wandb/`` and hidden folders are not searched. Each run is a dict with keys ``run_dir``
    (absolute), ``rel`` (relative to sweep_dir), ``status`` ("completed" | "failed" | "unfinished"),
    ``error`` (one line, <= 200 chars, "" if none), ``method``, ``seed`` and ``results`` (the parsed
    results.json for completed runs, else None). Raises FileNotFoundError if sweep_dir is missing.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {root}")
    markers = {RESULTS_NAME, FAILED, COMPLETED}
    runs: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        is_run = ".hydra" in dirnames or not markers.isdisjoint(filenames)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if is_run:
            runs.append(_read_run(Path(dirpath), root))
    return runs


# --------------------------------------------------------------------------------------------------
# aggregating
# --------------------------------------------------------------------------------------------------


def _method_order(methods: Iterable[str], method_order: Sequence[str] | None) -> list[str]:
    uniq = sorted(set(methods), key=lambda m: (m.lower(), m))
    if not method_order:
        return uniq
    first = [m for m in method_order if m in uniq]
    return first + [m for m in uniq if m not in first]


def _stats(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size >= 2 else None,
        "n": int(arr.size),
    }


def build_table(
    runs: list[dict[str, Any]], method_order: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Turn :func:`collect_runs` output into ``(per_run_rows, per_method_rows)``.

    ``per_run_rows``: one dict per run with keys :data:`COLUMNS` plus ``Run`` (relative folder);
    metric values are the raw numbers from results.json (accuracies as fractions) or None when
    missing or when the run did not complete.

    ``per_method_rows``: one dict per method with ``Method``, ``n`` (completed runs), ``failed``,
    ``unfinished`` and, per metric column, ``{"mean", "std", "n"}`` over the completed runs that
    report it (``std`` is the sample std, ddof=1, None when n == 1) or None when none does.

    Methods are sorted by name, except those listed in ``method_order`` which come first, in that order.
    """
    order = _method_order((r["method"] for r in runs), method_order)
    rank = {m: i for i, m in enumerate(order)}

    def run_key(r: dict[str, Any]) -> tuple:
        seed = r.get("seed")
        return (rank[r["method"]], seed is None, seed if seed is not None else 0, r.get("rel", ""))

    per_run: list[dict[str, Any]] = []
    for r in sorted(runs, key=run_key):
        res = r.get("results") if r["status"] == "completed" else None
        row: dict[str, Any] = {"Method": r["method"], "Seed": r.get("seed")}
        for col, key, _kind in METRICS:
            row[col] = _num(res.get(key)) if res else None
        row["Status"] = r["status"]
        row["Error"] = r.get("error") or ""
        row["Run"] = r.get("rel", "")
        per_run.append(row)

    per_method: list[dict[str, Any]] = []
    for m in order:
        rows = [row for row in per_run if row["Method"] == m]
        done = [row for row in rows if row["Status"] == "completed"]
        agg: dict[str, Any] = {
            "Method": m,
            "n": len(done),
            "failed": sum(row["Status"] == "failed" for row in rows),
            "unfinished": sum(row["Status"] == "unfinished" for row in rows),
        }
        for col in METRIC_COLUMNS:
            agg[col] = _stats([row[col] for row in done if row[col] is not None])
        per_method.append(agg)
    return per_run, per_method


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------


def _fmt(v: float, kind: str) -> str:
    if kind == "acc":
        return f"{100.0 * v:.2f}"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "time":
        return f"{v:.1f}"
    if kind == "si":
        a = abs(v)
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
            if a >= div:
                return f"{v / div:.3g}{suffix}"
        return f"{v:.3g}"
    return f"{v:.4g}"


def _fmt_stats(st: dict[str, Any] | None, kind: str, n_runs: int) -> str:
    if st is None:
        return ""
    std = "—" if st["std"] is None else _fmt(st["std"], kind)
    cell = f"{_fmt(st['mean'], kind)} ± {std}"
    if st["n"] != n_runs:
        cell += f" (n={st['n']})"
    return cell


def _md_escape(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return out


def _header(col: str, kind: str) -> str:
    return f"{col} (%)" if kind == "acc" else col


def render_markdown(
    per_run_rows: list[dict[str, Any]],
    per_method_rows: list[dict[str, Any]],
    sweep_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Markdown: per-method table (mean ± std, accuracies in %), then failed / unfinished jobs."""
    n_done = sum(r["Status"] == "completed" for r in per_run_rows)
    n_failed = sum(r["Status"] == "failed" for r in per_run_rows)
    n_unfin = sum(r["Status"] == "unfinished" for r in per_run_rows)
    lines = ["# Baseline results", ""]
    if sweep_dir is not None:
        lines.append(f"Sweep: `{sweep_dir}`  ")
    lines.append(
        f"Runs: {len(per_run_rows)} found, {n_done} completed, {n_failed} failed, {n_unfin} unfinished."
    )
    lines.append("")
    if n_done == 0:
        lines.append("**No finished runs**: nothing to aggregate yet.")
        lines.append("")
    if per_method_rows:
        lines.append(
            "Mean ± sample std (ddof=1) over the completed runs of each method (— when n = 1); "
            "accuracies in %; empty cells: not reported; (n=k): only k runs report that value."
        )
        lines.append("")
        header = ["Method", "n", "failed", "unfinished"] + [_header(c, k) for c, _, k in METRICS]
        rows = []
        for m in per_method_rows:
            rows.append(
                [m["Method"], str(m["n"]), str(m["failed"]), str(m["unfinished"])]
                + [_fmt_stats(m[c], k, m["n"]) for c, _, k in METRICS]
            )
        lines += _md_table(header, rows)
        lines.append("")

    lines.append("## Failed / unfinished jobs")
    lines.append("")
    bad = [r for r in per_run_rows if r["Status"] != "completed"]
    if bad:
        lines += _md_table(
            ["Run", "Method", "Seed", "Status", "Error"],
            [
                [r["Run"], r["Method"], "" if r["Seed"] is None else str(r["Seed"]), r["Status"], r["Error"]]
                for r in bad
            ],
        )
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


def _csv_text(per_run_rows: list[dict[str, Any]]) -> str:
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in per_run_rows:
        writer.writerow(["" if r.get(c) is None else r[c] for c in CSV_COLUMNS])
    return buf.getvalue()


def _plot(per_method_rows: list[dict[str, Any]], path: Path) -> None:
    """Bar plot of mean test accuracy (%) per method with std error bars (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(per_method_rows)
    fig = Figure(figsize=(max(4.0, 1.2 * n + 2.0), 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    stats = [m["Test Acc"] for m in per_method_rows]
    if not any(s is not None for s in stats):
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", fontsize=14, transform=ax.transAxes)
        ax.set_axis_off()
    else:
        x = np.arange(n)
        means = np.array([100.0 * s["mean"] if s else 0.0 for s in stats])
        errs = np.array([100.0 * s["std"] if s and s["std"] is not None else 0.0 for s in stats])
        ax.bar(x, means, yerr=errs, capsize=4, color="#4C72B0", edgecolor="black", linewidth=0.6)
        for xi, s, mu, err in zip(x, stats, means, errs):
            label = "no data" if s is None else f"{mu:.2f}\nn={s['n']}"
            ax.text(xi, (mu + err if s else 0.0) + 1.0, label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([m["Method"] for m in per_method_rows], rotation=30, ha="right")
        ax.set_ylabel("Test accuracy (%)")
        ax.set_ylim(0.0, max(100.0, float((means + errs).max()) + 12.0))
        ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test accuracy per method (mean ± std over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


MCE_BASELINE = "FrozenLN"


def corruption_table(runs: list[dict[str, Any]], baseline: str = MCE_BASELINE) -> list[dict[str, Any]]:
    """CIFAR-10-C per method, from the completed runs' ``robustness.json`` (when it has ``cifar10c``).

    Errors (1 - accuracy) are averaged over a method's seeds per corruption and severity; then,
    after Hendrycks & Dietterich (2019), CE_c = sum_s E_{s,c} / sum_s E^{baseline}_{s,c} and
    mCE = mean_c CE_c (a ratio: 1.0 is as robust as ``baseline``). Corruptions missing a severity
    for either side are left out of that method's mCE; with no baseline rows mCE stays empty.
    Returns rows ``{"Method", "n", "C mean Acc", "mCE", "corruptions"}``; [] when no run has CIFAR-10-C.
    """
    errors: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in runs:
        if r["status"] != "completed":
            continue
        try:
            rob = json.loads((Path(r["run_dir"]) / "robustness.json").read_text())
        except (OSError, ValueError):
            continue
        for corruption, by_sev in (rob.get("cifar10c") or {}).items():
            for sev, acc in (by_sev or {}).items():
                if acc is not None:
                    errors.setdefault(r["method"], {}).setdefault(corruption, {}).setdefault(str(sev), []).append(1.0 - float(acc))
    if not errors:
        return []
    mean = {m: {c: {s: float(np.mean(v)) for s, v in sevs.items()} for c, sevs in cs.items()} for m, cs in errors.items()}
    base = mean.get(baseline)
    rows = []
    for method in sorted(mean):
        cells = mean[method]
        all_err = [e for sevs in cells.values() for e in sevs.values()]
        ces = []
        for c, sevs in cells.items():
            if base and c in base and set(sevs) == set(base[c]) and sum(base[c].values()) > 0:
                ces.append(sum(sevs.values()) / sum(base[c].values()))
        rows.append({
            "Method": method,
            "n": max(len(v) for sevs in errors[method].values() for v in sevs.values()),
            "C mean Acc": 1.0 - float(np.mean(all_err)),
            "mCE": float(np.mean(ces)) if ces else None,
            "corruptions": len(cells),
        })
    return rows


def render_corruptions(rows: list[dict[str, Any]], baseline: str = MCE_BASELINE) -> str:
    if not rows:
        return ""
    lines = [f"## CIFAR-10-C (mCE relative to {baseline}; 1.00 = as robust as the baseline)", ""]
    lines += _md_table(
        ["Method", "n", "corruptions", "C mean Acc (%)", "mCE"],
        [[r["Method"], str(r["n"]), str(r["corruptions"]), f"{100 * r['C mean Acc']:.2f}", "" if r["mCE"] is None else f"{r['mCE']:.3f}"] for r in rows],
    )
    return "\n".join(lines) + "\n"


def _not_run_section(sweep_dir: Path) -> str:
    """The jobs an interrupted sweep did not start (``NOT_RUN.json``, written at the sweep's end)."""
    try:
        info = json.loads((sweep_dir / "NOT_RUN.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    jobs = [os.path.relpath(p, sweep_dir) for p in info.get("not_run") or []]
    listed = "\n".join(f"- `{j}`" for j in jobs) or "None."
    return f"\n## Not run: the sweep was interrupted by {info.get('signal')}\n\n{listed}\n"


def write_table(
    sweep_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    method_order: Sequence[str] | None = None,
) -> TablePaths:
    """Collect the runs under ``sweep_dir`` and write summary_results.{csv,md,png} into ``out_dir``
    (default: ``sweep_dir``), each atomically. Returns their paths. Works on an empty sweep.
    Raises FileNotFoundError if ``sweep_dir`` does not exist.
    """
    runs = collect_runs(sweep_dir)
    per_run, per_method = build_table(runs, method_order=method_order)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = TablePaths(out / CSV_NAME, out / MD_NAME, out / PNG_NAME)
    atomic_write_text(paths.csv, _csv_text(per_run))
    markdown = render_markdown(per_run, per_method, sweep_dir=sweep_dir)
    corruptions = render_corruptions(corruption_table(runs))
    markdown += _not_run_section(Path(sweep_dir))
    atomic_write_text(paths.md, markdown + ("\n" + corruptions if corruptions else ""))
    _plot(per_method, paths.png)
    return paths
