"""Render the results table: Markdown, per-run CSV and a bar plot (no statistics computed here)."""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .io import atomic_path

__all__ = ["METRICS", "code_cell", "code_notes", "comparison_lines", "csv_text", "summary_cell", "plot_test_accuracy", "render_markdown"]

#: (column, results.json key, display kind)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("Val Acc (%)", "val_acc", "acc"),
    ("Test Acc (%)", "test_acc", "acc"),
    ("Teacher Test Acc (%)", "teacher_test_acc", "acc"),
    ("Noise Acc (%)", "noise_acc", "acc"),
    ("Rotation Acc (%)", "rotation_acc", "acc"),
    ("GFLOPs / image", "flops_per_sample", "gflops"),
    ("Params", "params", "int"),
    ("Train time (s)", "train_time_s", "time"),
)
CSV_COLUMNS = ("Row", "Method", "Data", "Model", "Epochs", "Seed", "Source hash", "Git commit", "Git dirty", *(c for c, _, _ in METRICS), "Status", "Error", "Run")


def _fmt(v: float, kind: str) -> str:
    if kind == "acc":
        return f"{100.0 * v:.2f}"
    if kind == "pp":
        return f"{100.0 * v:+.2f}"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "time":
        return f"{v:.1f}"
    if kind == "gflops":
        return f"{v / 1e9:.4g}"
    return f"{v:.4g}"


def _cell(st: Optional[dict[str, Any]], kind: str, n_runs: int) -> str:
    if st is None:
        return ""
    if st["std"] is None:
        cell = f"{_fmt(st['mean'], kind)} (n=1)"
    else:
        cell = f"{_fmt(st['mean'], kind)} ± {_fmt(st['std'], kind)}"
    if st["n"] not in (n_runs, 1):
        cell += f" (n={st['n']})"
    return cell


def _esc(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in rows]
    return out


def _seeds(st: dict[str, Any]) -> str:
    if not st["n"]:
        return "0"
    seeds = ", ".join("?" if s is None else str(s) for s in st["seeds"])
    return f"{st['n']} ({seeds}{'; repeated seed' if st['repeated_seeds'] else ''})"


def _p(p: Optional[float]) -> str:
    if p is None:
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _latency_headers(lat: dict[str, Any]) -> tuple[str, str]:
    bs = lat["batch_sizes"]
    return (f"Latency (ms / image, batch {bs[0]}, {lat['threads']} thread{'s' if lat['threads'] != 1 else ''})",
            f"Throughput (images / s, batch {bs[-1]}, {lat['threads']} thread{'s' if lat['threads'] != 1 else ''})")


def code_cell(row: dict[str, Any]) -> str:
    """The code of a row's runs; a row pooling several sources is flagged ("mixed code")."""
    text = "; ".join(row["code"])
    return f"⚠ mixed code: {text}" if row["mixed_code"] else text


def code_notes(rows: Sequence[dict[str, Any]], pooled: bool = False) -> list[str]:
    """The sentences under a table that explain its Code column (and any mixed rows)."""
    lines = [
        "Code: the source hash of the row's runs (sha256 of the package's source files, 8 hex) and the git "
        "commit they ran from (dirty: with uncommitted changes, so the source hash is what identifies the code). "
        + ("Runs of one configuration made by different code are pooled in one row (asked for)."
           if pooled else "Runs of one configuration made by different code are separate rows, labelled `code <hash>`.")
    ]
    mixed = [r["label"] for r in rows if r["mixed_code"]]
    if mixed:
        lines.append(
            "Rows marked '⚠ mixed code' (" + ", ".join(mixed) + ") hold runs of more than one source "
            "(or runs that stored no identity): their mean and spread mix code versions, not only seeds."
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown table of a :func:`autonorm.pipeline.table.build_report` report."""
    rows, runs, lat = report["rows"], report["runs"], report.get("latency") or None
    n_done = sum(r["status"] == "completed" for r in runs)
    n_failed = sum(r["status"] == "failed" for r in runs)
    n_unfin = sum(r["status"] == "unfinished" for r in runs)
    lines = ["# Results", ""]
    lines.append("Source: " + ", ".join(f"`{f}`" for f in report["folders"]) + "  ")
    lines.append(f"Runs: {len(runs)} found, {n_done} completed, {n_failed} failed, {n_unfin} unfinished.")
    lines.append("")
    if n_done == 0:
        lines += ["**No finished runs**: nothing to aggregate yet.", ""]
    if rows:
        repeated = any(r["stats"]["repeated_seeds"] for r in rows)
        lines.append(
            "One row per configuration: the runs of a row differ by the seed alone "
            "(rows sharing a method name show the settings that differ). Cells: mean ± sample std "
            "(ddof=1) over the row's seeds; (n=1): a single run, which has no spread; (n=k): only k runs "
            "report the value; empty: not reported. Accuracies in %. FLOPs: forward pass per image, "
            "2 FLOPs per multiply-add."
            + (" Rows marked 'repeated seed' hold runs with the same seed: their spread is not over seeds."
               if repeated else "")
        )
        lines.append("")
        header = ["Row", "Data", "Model", "Epochs", "Code", "Runs (seeds)", "failed", "unfinished"] + [c for c, _, _ in METRICS]
        if lat and lat.get("models") is not None:
            header += list(_latency_headers(lat))
        body = []
        for r in rows:
            st = r["stats"]
            cells = [r["label"], r["data"] or "", r["model"] or "", "" if r["epochs"] is None else r["epochs"],
                     code_cell(r), _seeds(st), st["failed"], st["unfinished"]]
            cells += [_cell(st[key], kind, st["n"]) for _, key, kind in METRICS]
            if lat and lat.get("models") is not None:
                m = lat["models"].get(r["key"])
                bs = lat["batch_sizes"]
                cells += ["", ""] if m is None else [f"{m['ms_per_sample'][str(bs[0])]:.3g}", f"{m['images_per_s'][str(bs[-1])]:,.0f}"]
            body.append(cells)
        lines += _table(header, body)
        lines.append("")
        lines += [" ".join(code_notes(rows, not report.get("split_code", True))), ""]
        if lat:
            if lat.get("models") is not None:
                lines.append(
                    "Latency and throughput: every row's model (its first seed's best checkpoint) measured together "
                    + (f"on {lat['measured_at']} ({lat.get('machine') or 'machine not recorded'})" if lat.get("measured_at")
                       else "when this table was built")
                    + f", in one process on the CPU, {lat['threads']} torch thread(s), eval mode, "
                    f"{lat['warmup']} warm-up forwards, {lat['rounds']} rounds in rotating order, median over rounds, "
                    f"{omp_policy(lat.get('omp_wait_policy', 'unrecorded'))}"
                    + (f", malloc's thresholds {'raised (autonorm.runtime)' if lat['malloc_tuned'] else 'at their defaults'}"
                       if "malloc_tuned" in lat else "")
                    + "."
                )
            for label, why in (lat.get("skipped") or {}).items():
                lines.append(f"- {label}: not measured ({why}).")
            lines.append("")
        legends = {r["method"]: r["legend"] for r in rows if r.get("legend")}
        if legends:
            lines += ["Legend:", ""] + [f"- **{m}**: {text}" for m, text in sorted(legends.items())] + [""]
    lines += _comparisons(report)
    lines += _corruptions(report.get("corruptions"))
    lines += ["## Failed / unfinished jobs", ""]
    bad = [r for r in runs if r["status"] != "completed"]
    if bad:
        lines += _table(["Run", "Method", "Seed", "Status", "Error"],
                        [[r["rel"], r["method"], "" if r["seed"] is None else r["seed"], r["status"], r["error"]] for r in bad])
    else:
        lines.append("None.")
    lines.append("")
    for nr in report.get("not_run") or []:
        lines += [f"## Not run: the sweep was interrupted by {nr['signal']}", ""]
        lines += [f"- `{j}`" for j in nr["jobs"]] or ["None."]
        lines.append("")
    return "\n".join(lines)


def _power_line(comps: list[dict[str, Any]], alpha: float) -> str:
    """What it would take (:func:`~autonorm.pipeline.stats.planning`): the seeds per row that would
    confirm a 1-point difference at the median spread of these pairs, over this family."""
    from .stats import planning

    plan = planning(comps, alpha)
    if plan is None:
        return ""
    need = f"about {plan['seeds']} seeds per row" if plan["seeds"] is not None else "more than 1000 seeds per row"
    return (f" At the median spread of these pairs' differences (sd {100 * plan['sd']:.2f} pp), confirming a "
            f"{100 * plan['difference']:g}-point difference over these {plan['tests']} tests would take {need}.")


def omp_policy(value: Optional[str]) -> str:
    """How a measurement's ``OMP_WAIT_POLICY`` reads: it changes latency figures and their ratios
    (README, Performance), so every latency figure names it."""
    if value == "unrecorded":
        return "OMP_WAIT_POLICY not recorded"
    return f"OMP_WAIT_POLICY={value}" if value else "OMP_WAIT_POLICY unset (the OpenMP default)"


def _comparisons(report: dict[str, Any], title: str = "Paired comparisons of test accuracy") -> list[str]:
    if not report["comparisons"]:
        return []
    alpha = report["alpha"]
    lines = [f"## {title}", ""]
    lines.append(
        "Paired by seed (only seeds both rows have), two-sided paired t-test, 95% confidence interval of the "
        f"mean difference, p-values adjusted with Holm's method over all comparisons of a data set; a difference "
        f"is called a finding only when its adjusted p-value is below {alpha}. Differences in percentage points."
        + (" Planned comparisons only (the pairs listed)." if report.get("pairs") is not None
           else f" Every row against {report['baseline']}." if report.get("baseline") else " Every pair of rows.")
        + " Needed: the smallest difference (either sign) those seeds, with that pair's spread, could confirm"
        " over this family (Bonferroni's bound, t(1 − α/2m, n − 1) × sd/√n; a larger difference always passes):"
        " more seeds or fewer comparisons lower it."
    )
    lines.append("")
    for data, comps in report["comparisons"].items():
        found = [c for c in comps if c["finding"] in ("a > b", "a < b")]
        lines.append(f"**{data}**: {len(found)} of {len(comps)} comparisons pass." + _power_line(comps, alpha))
        lines.append("")
        body = []
        for c in comps:
            ci = "" if c["ci"] is None else f"[{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}]"
            finding = {"a > b": f"{c['a']} higher", "a < b": f"{c['b']} higher"}.get(c["finding"], c["finding"])
            diff = "" if c["mean_diff"] is None else _fmt(c["mean_diff"], "pp")
            needed = "" if c.get("needed") is None else f"{100 * c['needed']:.2f}"
            body.append([c["a"], c["b"], c["n"], diff, ci, _p(c["p"]), _p(c["p_holm"]), needed, finding])
        lines += _table(["Row A", "Row B", "paired seeds", "A − B (pp)", "95% CI (pp)", "p", "p (Holm)", "needed (pp)", "finding"], body)
        lines.append("")
    return lines


def _corruptions(sec: Optional[dict[str, Any]]) -> list[str]:
    if not sec:
        return []
    lines = ["## CIFAR-10-C", ""]
    srcs = sorted(set(sec["sources"].values()))
    lines.append(
        f"Over {sec['cells']} cells ({len(sec['corruptions'])} corruptions x severities), the same complete cells "
        f"from the same sources ({', '.join(srcs)}) for every row shown; mean ± sample std over seeds. "
        + (f"mCE (Hendrycks & Dietterich, 2019) relative to {sec['baseline']}'s mean errors (1.00 = as robust)."
           if sec["baseline"] else f"No mCE: the baseline row {sec['asked_baseline']} has no complete cells here.")
    )
    lines.append("")
    body = [[label, _cell(v["c_mean_acc"], "acc", v["c_mean_acc"]["n"]),
             "" if v["mce"] is None else _cell(v["mce"], "ratio", v["mce"]["n"])] for label, v in sec["rows"].items()]
    if body:
        lines += _table(["Row", "Mean corruption Acc (%)", "mCE"], body)
        lines.append("")
    for label, why in sec["incomplete"].items():
        lines.append(f"- {label}: not comparable, left out ({why}).")
    if sec["incomplete"]:
        lines.append("")
    return lines


def comparison_lines(comparisons: dict[str, list[dict[str, Any]]], alpha: float, title: str,
                     baseline: Optional[str] = None) -> list[str]:
    """The paired-comparison section (``{group name: compare_methods(...)}``) under ``title``."""
    return _comparisons({"comparisons": comparisons, "alpha": alpha, "baseline": baseline}, title)


def summary_cell(st: Optional[dict[str, Any]], kind: str, n_runs: int) -> str:
    """A cell of mean ± std over seeds; ``(n=1)`` for one run (no spread); ``(n=k)``: k of the runs."""
    return _cell(st, kind, n_runs)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """One line per run: the row it belongs to, its seed, raw numbers (accuracies as fractions)."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        for r in row["runs"]:
            res = r["results"] or {}
            vals = ["" if res.get(key) is None else res.get(key) for _, key, _ in METRICS]
            code = r["code"]
            writer.writerow([row["label"], r["method"], r["data"] or "", r["model"] or "", "" if r["epochs"] is None else r["epochs"],
                             "" if r["seed"] is None else r["seed"], code["source_hash"] or "", code["git_commit"] or "",
                             "" if code["git_dirty"] is None else code["git_dirty"], *vals, r["status"], r["error"], r["rel"]])
    return buf.getvalue()


def plot_test_accuracy(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar plot of mean test accuracy (%) per row with std error bars (none for one run)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(max(4.0, 1.2 * n + 2.0), 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    stats = [r["stats"]["test_acc"] for r in rows]
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
        ax.set_xticklabels([r["label"] for r in rows], rotation=30, ha="right")
        ax.set_ylabel("Test accuracy (%)")
        ax.set_ylim(0.0, max(100.0, float((means + errs).max()) + 12.0))
        ax.grid(axis="y", alpha=0.3)
    ax.set_title("Test accuracy per row (mean ± std over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
