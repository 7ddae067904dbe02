"""The results table of a set of finished runs: collect, compute, render, write.

``write_table(folders...)`` collects the runs (:mod:`.collect`), groups them into rows of runs that
differ by seed alone, computes per-row summaries over seeds, paired-by-seed comparisons with
Holm's correction (:mod:`.stats`), the CIFAR-10-C section (only over complete, equally sourced
cells) and, when asked, measures every row's model together for latency and throughput
(:func:`autonorm.eval.profile.interleaved_latency`), then writes, atomically:

- ``summary_results.csv``: one row per run (raw numbers, accuracies as fractions 0..1),
- ``summary_results.md``: the table (:mod:`.render`),
- ``summary_results.png``: bar plot of the test accuracy per row with std error bars.

Missing values stay empty: nothing is ever filled in.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

from .collect import check_data_sets, collect_runs, group_runs, number
from .io import atomic_write_text
from .render import METRICS, csv_text, plot_test_accuracy, render_markdown
from .stats import compare_methods, summary

__all__ = [
    "MCE_BASELINE",
    "TablePaths",
    "build_report",
    "collect_runs",
    "corruption_section",
    "write_table",
]

log = logging.getLogger("autonorm")

CSV_NAME = "summary_results.csv"
MD_NAME = "summary_results.md"
PNG_NAME = "summary_results.png"

#: the row CIFAR-10-C's mCE is relative to, by default (the pure LayerNorm student)
MCE_BASELINE = "LN-Finetune"


class TablePaths(NamedTuple):
    """Paths written by :func:`write_table`."""

    csv: Path
    md: Path
    png: Path


def _completed(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in row["runs"] if r["status"] == "completed"]


def _row_stats(row: dict[str, Any]) -> dict[str, Any]:
    done = _completed(row)
    seeds = [r["seed"] for r in done]
    stats: dict[str, Any] = {
        "n": len(done),
        "seeds": seeds,
        "repeated_seeds": len(set(seeds)) < len(seeds),
        "failed": sum(r["status"] == "failed" for r in row["runs"]),
        "unfinished": sum(r["status"] == "unfinished" for r in row["runs"]),
    }
    for _col, key, _kind in METRICS:
        stats[key] = summary([v for v in (number(r["results"].get(key)) for r in done) if v is not None])
    return stats


def _per_seed(row: dict[str, Any], key: str) -> dict[Any, float]:
    """``{seed: value}`` of a row (only when its seeds are distinct: otherwise nothing pairs)."""
    done = [r for r in _completed(row) if r["seed"] is not None and number(r["results"].get(key)) is not None]
    seeds = [r["seed"] for r in done]
    if len(set(seeds)) < len(seeds):
        return {}
    return {r["seed"]: float(r["results"][key]) for r in done}


def _cells(run: dict[str, Any]) -> Optional[tuple[dict[tuple[str, str], Optional[float]], dict[str, str]]]:
    try:
        rob = json.loads((Path(run["run_dir"]) / "robustness.json").read_text())
    except (OSError, ValueError):
        return None
    table = rob.get("cifar10c") if isinstance(rob, dict) else None
    if not isinstance(table, dict):
        return None
    cells = {(c, str(s)): number(a) for c, sevs in table.items() for s, a in (sevs or {}).items()}
    return cells, dict(rob.get("cifar10c_source") or {})


def corruption_section(rows: list[dict[str, Any]], baseline: str = MCE_BASELINE) -> Optional[dict[str, Any]]:
    """CIFAR-10-C over the rows whose runs have ``robustness.json["cifar10c"]``.

    Every compared run must have the same complete set of cells (corruption x severity, all
    scored) from the same sources (released ``npy`` or ``generated``); a row with any run that
    lacks cells or differs in sources is listed in ``"incomplete"`` with the reason and gets no
    numbers. Per complete row: the mean accuracy over all cells (``c_mean_acc``) and, relative to
    the ``baseline`` row's mean errors over its seeds (Hendrycks & Dietterich, 2019), the mCE
    ``mean_c sum_s E_{s,c} / sum_s E^base_{s,c}``, each per seed and summarised over seeds.
    Returns None when no run has CIFAR-10-C cells.
    """
    found: dict[str, list[tuple[dict, dict]]] = {}
    for row in rows:
        cells = [_cells(r) for r in _completed(row)]
        if any(c is not None for c in cells):
            found[row["label"]] = [c if c is not None else ({}, {}) for c in cells]
    if not found:
        return None
    all_cells = sorted({k for runs in found.values() for cells, _ in runs for k in cells})
    sources = {}
    for runs in found.values():
        for _, src in runs:
            sources.update({c: s for c, s in src.items() if c not in sources})
    incomplete: dict[str, str] = {}
    complete: dict[str, list[dict[tuple[str, str], float]]] = {}
    for label, runs in found.items():
        missing = sorted({f"{c}/{s}" for cells, _ in runs for (c, s) in all_cells if cells.get((c, s)) is None})
        differ = sorted({c for _, src in runs for c, s in src.items() if s != sources.get(c)})
        if missing:
            incomplete[label] = "missing " + ", ".join(missing[:6]) + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else "")
        elif differ:
            incomplete[label] = "sources differ for " + ", ".join(differ)
        else:
            complete[label] = [{k: v for k, v in cells.items() if v is not None} for cells, _ in runs]
    base = complete.get(baseline)
    base_err: Optional[dict[tuple[str, str], float]] = None
    if base:
        base_err = {k: sum(1.0 - run[k] for run in base) / len(base) for k in all_cells}
    corruptions = sorted({c for c, _ in all_cells})
    out_rows = {}
    for label, runs in complete.items():
        means = [sum(run.values()) / len(run) for run in runs]
        mces = []
        if base_err is not None:
            for run in runs:
                ces = []
                for c in corruptions:
                    keys = [k for k in all_cells if k[0] == c]
                    den = sum(base_err[k] for k in keys)
                    ces.append(sum(1.0 - run[k] for k in keys) / den if den > 0 else float("nan"))
                mces.append(sum(ces) / len(ces))
        out_rows[label] = {"c_mean_acc": summary(means), "mce": summary(mces) if mces else None}
    return {
        "cells": len(all_cells),
        "corruptions": corruptions,
        "sources": sources,
        "baseline": baseline if base_err is not None else None,
        "asked_baseline": baseline,
        "rows": out_rows,
        "incomplete": incomplete,
    }


def run_checkpoint(run_dir: Path, best: Optional[str] = None) -> Optional[Path]:
    """The checkpoint of a finished run: ``best`` (its ``results.json["best_checkpoint"]``, e.g.
    the cached teacher of the Teacher row), else ``checkpoints/best.ckpt``, else ``last.ckpt``;
    None when none of them exists."""
    for path in (best, run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"):
        if path and Path(path).is_file():
            return Path(path)
    return None


def row_checkpoint(row: dict[str, Any]) -> Optional[Path]:
    """The checkpoint of a row's first completed run that has one (:func:`run_checkpoint`)."""
    for r in _completed(row):
        path = run_checkpoint(Path(r["run_dir"]), r["results"].get("best_checkpoint"))
        if path is not None:
            return path
    return None


#: figures measured before: a dict as :func:`measure_rows` returns, or a function of the table's
#: rows returning one (or None), e.g. an archive's kept measurement
LatencySource = Optional[dict[str, Any] | Callable[[list[dict[str, Any]]], Optional[dict[str, Any]]]]


def measure_rows(rows: list[dict[str, Any]], batch_sizes: Sequence[int] = (1, 256), threads: Optional[int] = None,
                 rounds: int = 7, checkpoint: Callable[[dict[str, Any]], Optional[Path]] = row_checkpoint) -> dict[str, Any]:
    """Latency and throughput of every row's model (``checkpoint(row)``: by default its first
    completed run's best checkpoint), all measured together by
    :func:`autonorm.eval.profile.interleaved_latency` (keyed by the rows' ``key``). Rows whose
    checkpoint is missing or unloadable are listed in ``"skipped"`` with the reason."""
    from autonorm.eval.profile import interleaved_latency
    from autonorm.tasks import load_model_checkpoint

    models, skipped = {}, {}
    for row in rows:
        if not _completed(row):
            continue
        path = checkpoint(row)
        if path is None:
            skipped[row["label"]] = "no checkpoint"
            continue
        try:
            models[row["key"]] = load_model_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - a row without a model gets an empty cell
            skipped[row["label"]] = f"{type(exc).__name__}: {exc}"
    out = interleaved_latency(models, batch_sizes=batch_sizes, threads=threads, rounds=rounds) if models else {}
    out["skipped"] = skipped
    return out


def _not_run(folder: Path) -> Optional[dict[str, Any]]:
    """The jobs an interrupted sweep did not start (its ``NOT_RUN.json``, written at the sweep's end)."""
    try:
        info = json.loads((folder / "NOT_RUN.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    jobs = [os.path.relpath(p, folder) for p in info.get("not_run") or []]
    return {"folder": str(folder), "signal": info.get("signal"), "jobs": jobs}


def build_report(
    *folders: str | os.PathLike[str],
    method_order: Optional[Sequence[str]] = None,
    allow_mixed: bool = False,
    baseline: Optional[str] = None,
    mce_baseline: str = MCE_BASELINE,
    alpha: float = 0.05,
    split_code: bool = True,
    pairs: Optional[Sequence[tuple[str, str]]] = None,
    latency: LatencySource = None,
    measure: bool = False,
    latency_batch_sizes: Sequence[int] = (1, 256),
    threads: Optional[int] = None,
    rounds: int = 7,
) -> dict[str, Any]:
    """Everything the table shows, as one dict (see :func:`write_table` for the arguments)."""
    runs = collect_runs(*folders)
    rows = group_runs(runs, list(method_order or []), split_code=split_code)
    data_sets = check_data_sets(rows, allow_mixed)
    for row in rows:
        row["stats"] = _row_stats(row)
    comparisons = {}
    for data in data_sets:
        per_seed = {r["label"]: _per_seed(r, "test_acc") for r in rows if str(r["data"]) == data and r["stats"]["n"]}
        if pairs is not None:
            planned = [(a, b) for a, b in pairs if a in per_seed or b in per_seed]
            if planned:
                comparisons[data] = compare_methods(per_seed, alpha=alpha, pairs=planned)
            continue
        base = baseline if baseline in per_seed else None
        if len(per_seed) >= 2 and (baseline is None or base is not None):
            comparisons[data] = compare_methods(per_seed, baseline=base, alpha=alpha)
    if callable(latency):  # figures kept elsewhere, chosen for these rows (e.g. an archive's latency.json)
        latency = latency(rows)
    if latency is None and measure:
        latency = measure_rows(rows, latency_batch_sizes, threads, rounds)
    return {
        "folders": [str(f) for f in folders],
        "not_run": [n for n in (_not_run(Path(f)) for f in folders) if n],
        "runs": runs,
        "rows": rows,
        "data_sets": data_sets,
        "comparisons": comparisons,
        "baseline": baseline,
        "pairs": [list(p) for p in pairs] if pairs is not None else None,
        "alpha": alpha,
        "split_code": split_code,
        "corruptions": corruption_section(rows, mce_baseline),
        "latency": latency,
    }


def write_table(
    *folders: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    method_order: Optional[Sequence[str]] = None,
    allow_mixed: bool = False,
    baseline: Optional[str] = None,
    mce_baseline: str = MCE_BASELINE,
    alpha: float = 0.05,
    split_code: bool = True,
    pairs: Optional[Sequence[tuple[str, str]]] = None,
    measure_latency: bool = True,
    latency_batch_sizes: Sequence[int] = (1, 256),
    threads: Optional[int] = None,
    rounds: int = 7,
    latency: LatencySource = None,
) -> TablePaths:
    """Collect the runs under ``folders`` and write summary_results.{csv,md,png} into ``out_dir``
    (default: the first folder), each atomically. Returns their paths.

    Args:
        folders: run folders or sweep folders (searched recursively).
        method_order: rows of these methods first, in this order.
        allow_mixed: accept runs of several data sets (else :class:`MixedDataError`).
        baseline: compare every row to this row label only (else every pair of rows).
        pairs: planned comparisons ``(row A, row B)`` instead (see
            :func:`autonorm.pipeline.stats.family_pairs`); per data set, the pairs with a row in it.
        mce_baseline: the row CIFAR-10-C's mCE is relative to.
        alpha: family-wise error rate of the comparisons (Holm).
        split_code: separate rows for runs of one configuration made by different code (source
            hash); False pools them in one row flagged as mixed.
        measure_latency: measure every row's model for latency and throughput now, together.
        latency_batch_sizes, threads, rounds: that measurement's batch sizes (first: latency,
            last: throughput), torch threads (default: the current count) and rounds.
        latency: figures measured before, instead of measuring (a dict as
            :func:`measure_rows` returns, or a function of the rows returning one or None).

    Raises FileNotFoundError for a missing folder and MixedDataError (see ``allow_mixed``).
    """
    if not folders:
        raise ValueError("no run or sweep folder given")
    report = build_report(
        *folders, method_order=method_order, allow_mixed=allow_mixed, baseline=baseline, mce_baseline=mce_baseline,
        alpha=alpha, split_code=split_code, pairs=pairs, latency=latency, measure=measure_latency, latency_batch_sizes=latency_batch_sizes,
        threads=threads, rounds=rounds,
    )
    out = Path(out_dir) if out_dir is not None else Path(folders[0])
    out.mkdir(parents=True, exist_ok=True)
    paths = TablePaths(out / CSV_NAME, out / MD_NAME, out / PNG_NAME)
    atomic_write_text(paths.csv, csv_text(report["rows"]))
    from .dg_table import render_dg  # the domain-generalisation section ("" without domain results)

    dg = render_dg(report["rows"], alpha=alpha, pooled=not split_code)
    atomic_write_text(paths.md, render_markdown(report) + ("\n" + dg if dg else ""))
    plot_test_accuracy(report["rows"], paths.png)
    return paths
