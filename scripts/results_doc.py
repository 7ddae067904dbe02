"""Write a results page (Markdown) from finished sweep folders: no number is typed by hand.

    python scripts/results_doc.py outputs/table/full --title "Baseline table (full data)" --out docs/results_table_full.md

Builds the table with :func:`autonorm.pipeline.table.build_report` (rows of runs that differ by seed
alone, paired-by-seed comparisons with Holm's correction, latency and throughput of all rows
measured together now unless ``--no-latency``) and states the machine, the budget (from the
sweep's ``multirun.yaml``), the seeds and the wall time (first job start to last job end).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from autonorm.pipeline.io import atomic_write_text  # noqa: E402
from autonorm.pipeline.render import render_markdown  # noqa: E402
from autonorm.pipeline.table import build_report  # noqa: E402


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
        return "(no multirun.yaml)"
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--title", default="Baseline table")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-latency", action="store_true", help="do not measure the rows' latency and throughput")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the latency measurement")
    args = ap.parse_args()
    if not args.sweep.is_dir():
        print(f"sweep folder not found: {args.sweep}", file=sys.stderr)
        return 1
    report = build_report(args.sweep, measure=not args.no_latency, threads=args.threads)
    runs = report["runs"]
    seeds = sorted({r["seed"] for r in runs if r["seed"] is not None})
    text = [
        f"## {args.title}",
        "",
        f"- Machine: {_cpu()}; generated {datetime.now():%Y-%m-%d}.",
        f"- Budget: {_budget(args.sweep)}.",
        f"- Seeds: {', '.join(map(str, seeds))}; wall time of the whole sweep: {_wall_time(runs)}.",
        f"- Source: `{args.sweep}` (rebuild with `python -m autonorm.compare {args.sweep}`).",
        "",
        render_markdown(report).split("\n", 1)[1].strip().replace("\n## ", "\n### "),
        "",
    ]
    atomic_write_text(args.out, "\n".join(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
