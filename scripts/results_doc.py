"""Write a results page (Markdown) from finished sweep folders: no number is typed by hand.

    python scripts/results_doc.py outputs/table/full --title "Baseline table (full data)" --out docs/results_table_full.md
    python scripts/results_doc.py docs/results/dg --title "Domain generalisation from MNIST" \
        --reference afn-digits --out docs/results.md --section dg
    python scripts/results_doc.py docs/results/recipe --title "CIFAR-10 at the recipe's budget" \
        --reference seed-readme --out docs/results.md --section recipe

Builds the table with :func:`autonorm.pipeline.table.build_report` (rows of runs that differ by seed
alone and were made by the same code, paired-by-seed comparisons with Holm's correction, the
domain-generalisation section when the runs scored digit targets, latency and throughput of all
rows measured together now unless ``--no-latency``) and states the machine, the budget (from the
sweep's ``multirun.yaml``), the seeds and the wall time (first job start to last job end).

A committed archive (``docs/results/<table>/``, written by ``scripts/collect_results.py collect``)
works as well: the section then opens with the archive's coverage (which expected jobs are
missing); latency is measured only when the run folders keep checkpoints (an archive does not),
or with ``--checkpoints SWEEP_DIR``: the sweep folder the archive was collected from, whose run
folders (same relative paths, the same ``identity.json``) still hold their checkpoints. That
measurement is kept in the archive (``latency.json``, with its machine and time) and shown again
by every later rebuild, for the rows whose measured run is still archived unchanged. ``--reference`` adds
published figures beside ours, labelled as such (:data:`REFERENCES`). ``--section NAME`` replaces
the text between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in ``--out`` (added at
the end when absent), so one page holds several generated sections.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from autonorm.pipeline import archive  # noqa: E402
from autonorm.pipeline.dg_table import render_dg  # noqa: E402
from autonorm.pipeline.io import atomic_write_text  # noqa: E402
from autonorm.pipeline.render import render_markdown  # noqa: E402
from autonorm.pipeline.stats import family_pairs  # noqa: E402
from autonorm.pipeline.table import build_report, measure_rows, run_checkpoint  # noqa: E402
from autonorm.runtime import tune_malloc  # noqa: E402

#: Published figures shown beside ours (never mixed into our rows): (heading, caption, header, rows).
REFERENCES: dict[str, tuple[str, str, list[str], list[list[str]]]] = {
    "afn-digits": (
        "AFN paper, CNN, other target sets",
        "Single-source domain generalisation from MNIST as reported in the AFN paper (accuracy %, a CNN, "
        "not a Vision Transformer; its targets are the real SVHN, USPS and MNIST-M, not the generated "
        "targets above): a different architecture and different target sets, so not comparable cell by cell.",
        ["Method (AFN paper, CNN)", "SVHN (%)", "USPS (%)", "MNIST-M (%)"],
        [["AFN", "33.8", "81.2", "63.8"], ["ASRNorm", "34.1", "78.5", "64.3"], ["BN", "27.8", "76.9", "52.7"]],
    ),
    "seed-readme": (
        "Claimed, not reproduced",
        "Figures claimed by the README of the code this project started from (CIFAR-10 test accuracy); no runs, "
        "configuration or seeds were published with them, and this project has not reproduced them. Its "
        "FrozenLN is the pure LayerNorm student (the LN-* rows here).",
        ["Method (seed README)", "CIFAR-10 test acc (%), claimed, not reproduced"],
        [["AutoNorm-Finetune", "86.1"], ["FrozenLN", "74.5"]],
    ),
}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def _budget(sweep: Path) -> str:
    import yaml

    path = sweep / "multirun.yaml"
    if not path.exists():
        return "the Data, Model and Epochs columns of each row (each run's config.yaml)"
    cfg = yaml.safe_load(path.read_text())
    t, tr, d = cfg.get("trainer", {}), cfg.get("transfer", {}), cfg.get("distill", {})
    parts = [
        f"data `{cfg.get('data', {}).get('name')}` (batch {cfg.get('data', {}).get('batch_size')})",
        f"model `{cfg.get('model', {}).get('name')}`",
        f"{t.get('max_epochs')} epochs" + (f" x {t.get('limit_train_batches')} batches" if t.get("limit_train_batches") else ""),
        f"pretraining {tr.get('pretrain', {}).get('max_epochs')} epochs on `{tr.get('pretrain', {}).get('data')}`",
        f"teacher `{d.get('teacher', {}).get('model', 'vit_small')}` {d.get('teacher', {}).get('max_epochs')} epochs",
        f"lr {cfg.get('optim', {}).get('lr')}",
    ]
    overrides = cfg.get("hydra", {}).get("overrides", {}).get("task", [])
    return "; ".join(parts) + (f"; command-line overrides: `{' '.join(overrides)}`" if overrides else "")


def _wall_time(runs: list[dict]) -> str:
    starts, ends = [], []
    for r in runs:
        d = Path(r["run_dir"])
        if (d / ".hydra" / "config.yaml").exists():  # written by Hydra as the job starts
            starts.append((d / ".hydra" / "config.yaml").stat().st_mtime)
        for marker in ("COMPLETED", "FAILED"):
            if (d / marker).exists():
                ends.append((d / marker).stat().st_mtime)
    if not starts or not ends:
        return "unknown"
    span = max(ends) - min(starts)
    return f"{span / 60:.1f} min ({datetime.fromtimestamp(min(starts)):%Y-%m-%d %H:%M} to {datetime.fromtimestamp(max(ends)):%H:%M})"


def reference_section(name: str) -> str:
    """The published figures ``name`` of :data:`REFERENCES` as a labelled Markdown table."""
    heading, caption, header, rows = REFERENCES[name]
    lines = [f"### {heading}", "", caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def replace_section(page: str, name: str, text: str) -> str:
    """``page`` with the text between the markers of section ``name`` replaced (appended when absent)."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in page and end in page and page.index(start) < page.index(end):
        return page[: page.index(start)] + block + page[page.index(end) + len(end):]
    return page.rstrip("\n") + ("\n\n" if page.strip() else "") + block + "\n"


def twin_checkpoints(rows: list[dict], archive_dir: Path, sweep_dir: Path
                     ) -> tuple[Callable[[dict], Optional[Path]], dict[str, str], dict[str, Path]]:
    """For ``measure_rows(checkpoint=...)``: each row's checkpoint, found on the twin of one of its
    archived runs under ``sweep_dir`` (the same path relative to ``archive_dir`` and the same
    ``identity.json``; :func:`run_checkpoint` of the twin); ``{run folder: reason}`` for the
    runs without such a twin; and ``{row key: archived run folder}`` of the runs whose twins were
    chosen (for :func:`autonorm.pipeline.archive.save_latency`)."""
    found: dict[str, Path] = {}
    chosen: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for row in rows:
        for r in row["runs"]:
            if r["status"] != "completed":
                continue
            rel = Path(r["run_dir"]).resolve().relative_to(archive_dir.resolve())
            twin = sweep_dir / rel
            mine, theirs = Path(r["run_dir"]) / "identity.json", twin / "identity.json"
            if not (mine.is_file() and theirs.is_file() and mine.read_bytes() == theirs.read_bytes()):
                missing[str(rel)] = "another run there (identity.json differs)" if theirs.is_file() else "not there"
            elif (path := run_checkpoint(twin, r["results"].get("best_checkpoint"))) is None:
                missing[str(rel)] = "no checkpoints there"
            elif row["key"] not in found:
                found[row["key"]], chosen[row["key"]] = path, Path(r["run_dir"])
    return (lambda row: found.get(row["key"])), missing, chosen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--title", default="Baseline table")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-latency", action="store_true", help="do not measure the rows' latency and throughput")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help="the sweep folder an archive was collected from: measure latency on its runs' checkpoints")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the latency measurement")
    ap.add_argument("--reference", choices=sorted(REFERENCES), action="append", default=[],
                    help="published figures to show beside ours, labelled (repeatable)")
    ap.add_argument("--section", default=None, help="replace this marked section of --out instead of writing the whole file")
    ap.add_argument("--family", action="append", default=None, metavar="A1,A2:B1,B2",
                    help="planned comparisons: each row on the left against each row on the right (repeatable); default every pair")
    args = ap.parse_args()
    tune_malloc()  # latency measured as in the training processes that write the tables
    if not args.sweep.is_dir():
        print(f"sweep folder not found: {args.sweep}", file=sys.stderr)
        return 1
    if args.checkpoints is not None and not args.checkpoints.is_dir():
        print(f"--checkpoints: folder not found: {args.checkpoints}", file=sys.stderr)
        return 1
    is_archive = (args.sweep / archive.EXPECTED_NAME).is_file()
    try:
        pairs = family_pairs(args.family) if args.family else None
    except ValueError as exc:
        print(f"--family: {exc}", file=sys.stderr)
        return 2
    report = build_report(args.sweep, measure=False, pairs=pairs)
    runs = report["runs"]
    latency_note: Optional[str] = None  # what the section says about latency, when not measured here as usual
    if args.no_latency:
        latency_note = "not measured (`--no-latency`)."
    elif args.checkpoints is not None:
        lookup, missing, chosen = twin_checkpoints(report["rows"], args.sweep, args.checkpoints)
        for rel, why in sorted(missing.items()):
            print(f"no checkpoint for {rel}: {why}", file=sys.stderr)
        report["latency"] = measure_rows(report["rows"], threads=args.threads, checkpoint=lookup)
        latency_note = (f"every row's model measured together now (interleaved rounds), from the checkpoints of the runs in `{args.checkpoints}`"
                        + (f"; {len(missing)} run(s) had none there" if missing else ""))  # fmt: skip
        if is_archive:
            kept = archive.save_latency(args.sweep, report["latency"], chosen)
            report["latency"] = archive.load_latency(args.sweep, report["rows"])  # what a rebuild from the archive shows
            latency_note += f"; kept in `{kept.name}` beside the runs, so a rebuild from the archive shows the same figures."
        else:
            latency_note += "."
    elif (kept_latency := archive.load_latency(args.sweep, report["rows"])) is not None:
        report["latency"] = kept_latency
        latency_note = (f"measured on {kept_latency['measured_at']} from the checkpoints of the sweep this archive was collected "
                        f"from, kept in `{archive.LATENCY_NAME}` (re-measure with `--checkpoints SWEEP_DIR`).")
    elif any((Path(r["run_dir"]) / "checkpoints").is_dir() for r in runs):
        report["latency"] = measure_rows(report["rows"], threads=args.threads)
    else:
        latency_note = "not measured (the run folders keep no checkpoints, as in an archive)."
    seeds = sorted({r["seed"] for r in runs if r["seed"] is not None})
    body = render_markdown(report).split("\n", 1)[1].strip()
    dg = render_dg(report["rows"], alpha=report["alpha"])
    if dg:
        body += "\n\n" + dg.strip()
    wall = _wall_time(runs)
    text = [f"## {args.title}", ""]
    if is_archive:
        text += [archive.render_coverage(args.sweep).strip(), ""]
    text += [
        f"- Machine: {_cpu()}; generated {datetime.now():%Y-%m-%d}.",
        f"- Budget: {_budget(args.sweep)}.",
        f"- Seeds: {', '.join(map(str, seeds))}" + (f"; wall time of the whole sweep: {wall}." if wall != "unknown" else "."),
        f"- Source: `{args.sweep}` (rebuild with `python scripts/results_doc.py {args.sweep} ...`"
        + (f" or `python scripts/collect_results.py table {args.sweep}`)." if is_archive else f" or `python -m autonorm.compare {args.sweep}`)."),
    ]
    if latency_note:
        text.append(f"- Latency and throughput: {latency_note}")
    text += ["", body.replace("\n## ", "\n### "), ""]
    text += [reference_section(name) for name in args.reference]
    page = "\n".join(text)
    if args.section:
        old = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        page = replace_section(old, args.section, page)
    atomic_write_text(args.out, page)
    print(f"wrote {args.out}" + (f" (section {args.section})" if args.section else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
