"""The domain-generalisation section of the results table (Markdown).

Input: the rows of :func:`autonorm.pipeline.collect.group_runs` (runs of one configuration and
one code version, differing by seed alone). Runs without a ``domains`` entry in ``results.json``
(not MNIST-trained, or ``eval.domains`` empty) are ignored, and so is a row without such runs.
Per row: its data set, model, epochs and code, the source (MNIST) test accuracy, the accuracy on
each target and the average over the targets, as mean ± sample std (ddof=1) over seeds with the
number of runs (one run: "(n=1)", no spread). The average is taken per run over the targets that
every listed run scored (named under the table), so rows are averaged over the same targets. A
target a run could not score (absent files, a failure) is an empty cell, never a number.

The rows are compared on that per-run average, paired by seed, with Holm's correction over all
pairs (:func:`autonorm.pipeline.stats.compare_methods`, the same test as the main table); only the
differences that pass are worded as findings.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

from .render import code_cell, comparison_lines, summary_cell
from .stats import compare_methods, summary

__all__ = ["dg_comparisons", "dg_rows", "render_dg"]


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _domain_results(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The results of a row's completed runs that carry domain accuracies."""
    out = []
    for run in row["runs"]:
        res = run.get("results") if run.get("status") == "completed" else None
        if isinstance(res, dict) and isinstance(res.get("domains"), dict) and res["domains"]:
            out.append({**res, "seed": run.get("seed")})
    return out


def dg_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """``(targets, averaged_targets, dg rows)``.

    Each dg row: the table row's ``label``, ``method``, ``data``, ``model``, ``epochs``, ``code``,
    ``mixed_code``; ``n`` (runs with domain results), ``seeds``; ``source``, each target and
    ``average`` as :func:`autonorm.pipeline.stats.summary` dicts (or None); ``per_seed``:
    ``{seed: average}`` when the row's seeds are distinct (else empty: nothing pairs).
    """
    found = [(row, res) for row in rows if (res := _domain_results(row))]
    every = [r for _, res in found for r in res]
    targets: list[str] = []
    for r in every:
        targets += [t for t in r["domains"] if t not in targets]
    targets = [t for t in targets if any(_ok(r["domains"].get(t)) for r in every)]  # scored at least once
    common = [t for t in targets if all(_ok(r["domains"].get(t)) for r in every)]
    out = []
    for row, res in found:
        seeds = [r["seed"] for r in res]
        avgs = [(r["seed"], statistics.fmean(float(r["domains"][t]) for t in common)) for r in res] if common else []
        dg: dict[str, Any] = {k: row.get(k) for k in ("label", "method", "data", "model", "epochs", "code", "mixed_code")}
        dg.update(n=len(res), seeds=sorted(s for s in seeds if s is not None))
        dg["source"] = summary([float(r["test_acc"]) for r in res if _ok(r.get("test_acc"))])
        for t in targets:
            dg[t] = summary([float(r["domains"][t]) for r in res if _ok(r["domains"].get(t))])
        dg["average"] = summary([a for _, a in avgs])
        distinct = None not in seeds and len(set(seeds)) == len(seeds)
        dg["per_seed"] = {s: a for s, a in avgs} if distinct else {}
        out.append(dg)
    return targets, common, out


def dg_comparisons(dgrows: list[dict[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every pair of rows on the per-run target average, paired by seed, Holm-adjusted."""
    per_seed = {r["label"]: r["per_seed"] for r in dgrows if r["per_seed"]}
    return compare_methods(per_seed, alpha=alpha) if len(per_seed) >= 2 else []


def render_dg(rows: Iterable[dict[str, Any]], title: str = "Domain generalisation from MNIST",
              alpha: float = 0.05, pooled: bool = False) -> str:
    """The section as Markdown ("" when no run has domain accuracies). ``pooled``: the rows were
    grouped without splitting by code (said under the table)."""
    rows = list(rows)
    targets, common, dgrows = dg_rows(rows)
    if not dgrows:
        return ""
    unscored = sorted({t for row in rows for r in _domain_results(row) for t in r["domains"]} - set(targets))
    header = ["Row", "Data", "Model", "Epochs", "Code", "Runs (seeds)", "MNIST test (%)",
              *[f"{t} (%)" for t in targets], "Target average (%)"]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in dgrows:
        n = r["n"]
        cells = [r["label"], str(r["data"] or ""), str(r["model"] or ""), "" if r["epochs"] is None else str(r["epochs"]),
                 code_cell(r), f"{n} ({', '.join(map(str, r['seeds']))})",
                 summary_cell(r["source"], "acc", n), *[summary_cell(r[t], "acc", n) for t in targets],
                 summary_cell(r["average"], "acc", n)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    mixed = [r["label"] for r in dgrows if r["mixed_code"]]
    lines += [
        "",
        "Accuracy (%) of models trained on MNIST alone, on targets never seen in training. One row per "
        "configuration and code version (runs differing by seed alone); cells: mean ± sample std (ddof=1) "
        "over seeds; (n=1): a single run, which has no spread; (n=k): only k runs report that cell. "
        f"Target average: per run over {', '.join(common) if common else 'no target scored by every run'}, "
        "then over seeds. Code: source hash (git commit)"
        + (", runs of different code pooled (asked for)" if pooled else ", a row per code version")
        + ". Targets and their provenance: `autonorm/data/domains.py` and each run's `robustness.json`."
        + (f" Not scored by any run (absent here): {', '.join(unscored)}." if unscored else "")
        + (f" ⚠ mixed code ({', '.join(mixed)}): the row's spread mixes code versions, not only seeds." if mixed else ""),
        "",
    ]
    comps = dg_comparisons(dgrows, alpha)
    if comps:
        lines += comparison_lines({"Target average": comps}, alpha, "Paired comparisons of the target average")
    return "\n".join(lines).rstrip("\n") + "\n"
