"""The domain-generalisation section of the results table (Markdown).

Input: the runs of a sweep, each a ``results.json`` dict or a record of
:func:`autonorm.pipeline.table.collect_runs` (its ``results``). Runs without a ``domains`` entry
(not MNIST-trained, or ``eval.domains`` empty) are ignored. Per method: the source (MNIST) test
accuracy, the accuracy on each target and the average over the targets, as mean +- sample std
(ddof=1) over seeds with the number of runs. The average is taken per run over the targets that
every listed run scored (named under the table), so rows are averaged over the same targets.
A target a run could not score (absent files, a failure) is an empty cell, never a number.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Optional

__all__ = ["domain_runs", "dg_rows", "render_dg"]


def _results(run: dict[str, Any]) -> Optional[dict[str, Any]]:
    if "status" in run and "results" in run:  # a collect_runs record
        return run["results"] if run["status"] == "completed" else None
    return run


def domain_runs(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results dicts that carry domain accuracies."""
    out = []
    for run in runs:
        res = _results(run)
        if isinstance(res, dict) and isinstance(res.get("domains"), dict) and res["domains"]:
            out.append(res)
    return out


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_std(values: list[float]) -> Optional[tuple[float, Optional[float], int]]:
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def dg_rows(runs: Iterable[dict[str, Any]]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """``(targets, averaged_targets, rows)``; each row: method, n, and ``(mean, std, n)`` per column."""
    res = domain_runs(runs)
    targets: list[str] = []
    for r in res:
        targets += [t for t in r["domains"] if t not in targets]
    targets = [t for t in targets if any(_ok(r["domains"].get(t)) for r in res)]  # scored at least once
    common = [t for t in targets if all(_ok(r["domains"].get(t)) for r in res)]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in res:
        by_method.setdefault(str(r.get("method") or "unknown"), []).append(r)
    rows = []
    for method in sorted(by_method, key=lambda m: (m.lower(), m)):
        group = by_method[method]
        row: dict[str, Any] = {"method": method, "n": len(group), "seeds": sorted(r.get("seed") for r in group if r.get("seed") is not None)}
        row["source"] = _mean_std([float(r["test_acc"]) for r in group if _ok(r.get("test_acc"))])
        for t in targets:
            row[t] = _mean_std([float(r["domains"][t]) for r in group if _ok(r["domains"].get(t))])
        avgs = [statistics.fmean(float(r["domains"][t]) for t in common) for r in group] if common else []
        row["average"] = _mean_std(avgs)
        rows.append(row)
    return targets, common, rows


def _cell(st: Optional[tuple[float, Optional[float], int]], n_runs: int) -> str:
    if st is None:
        return ""
    mean, std, n = st
    text = f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    return text + (f" (n={n})" if n != n_runs else "")


def render_dg(runs: Iterable[dict[str, Any]], title: str = "Domain generalisation from MNIST") -> str:
    """The section as Markdown ("" when no run has domain accuracies)."""
    runs = list(runs)
    targets, common, rows = dg_rows(runs)
    unscored = sorted({t for r in domain_runs(runs) for t in r["domains"]} - set(targets))
    if not rows:
        return ""
    header = ["Method", "n", "MNIST test (%)", *[f"{t} (%)" for t in targets], "Average (%)"]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], str(row["n"]), _cell(row["source"], row["n"]), *[_cell(row[t], row["n"]) for t in targets], _cell(row["average"], row["n"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Accuracy (%) of models trained on MNIST alone, on targets never seen in training; mean ± "
        "sample std (ddof=1) over seeds (no ± when n = 1; (n=k): only k runs report that cell). "
        f"Average over: {', '.join(common) if common else 'no target scored by every run'}. "
        "Targets and their provenance: `autonorm/data/domains.py` and each run's `robustness.json`."
        + (f" Not scored by any run (absent here): {', '.join(unscored)}." if unscored else ""),
    ]
    return "\n".join(lines) + "\n"
