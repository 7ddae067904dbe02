"""Run a time-to-accuracy recipe for several norms and draw their curves on one plot.

    python scripts/time_to_accuracy.py --recipe fast_mnist --norms ln,dyt,autonorm,afn --data-root ../shared/data

Each norm is one ordinary ``train.py experiment=<recipe> norm=<norm>`` run (so its folder, curves
and checkpoints are where every run's are); this script only launches them (one after another,
or ``--jobs`` at a time) and gathers their ``time_to_accuracy.csv`` into
``outputs/time_to_accuracy/<recipe>/`` (``curves.csv`` and ``curves.png``, with the recipe's
targets drawn in) and ``summary.md``: per norm, the last epoch's test accuracy, when the target
accuracy was first reached (training time and the job's whole wall time), and the job's wall
time measured around the ``train.py`` process.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from autonorm.pipeline.io import atomic_write_text  # noqa: E402
from autonorm.viz.plots import plot_time_to_accuracy  # noqa: E402

TARGETS = {
    "fast_mnist": [(0.99, 300.0, "99% in 5 min")],
    "fast_cifar10": [(0.75, 900.0, "75% in 15 min")],
}


def _reached(curve: list[dict[str, str]], acc: float) -> str:
    """``"<train> s / <wall> s"`` at the first epoch whose test accuracy is >= ``acc``, else ``"not reached"``."""
    for r in curve:
        if float(r["test_acc"]) >= acc:
            wall = r.get("wall_s")
            return f"{float(r['train_time_s']):.0f} s / {float(wall):.0f} s" if wall else f"{float(r['train_time_s']):.0f} s"
    return "not reached"


def _summary_row(norm: str, curve: list[dict[str, str]], targets: list, results: dict, job_s: float) -> str:
    final = 100 * float(curve[-1]["test_acc"]) if curve else float("nan")
    cells = [_reached(curve, acc) for acc, _, _ in targets]
    return f"| {norm} | {final:.2f}% | " + " | ".join(cells) + f" | {results.get('train_time_s')} | {job_s:.0f} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fast_mnist", help="experiment config (fast_mnist | fast_cifar10)")
    ap.add_argument("--norms", default="ln,dyt,autonorm,afn")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--output-root", default="outputs")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cpu_count / jobs threads); "
                    "side by side they share memory bandwidth, so their times are conservative")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cpu_count / jobs)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()

    out_dir = REPO / args.output_root / "time_to_accuracy" / args.recipe
    out_dir.mkdir(parents=True, exist_ok=True)
    curves: dict[str, Path] = {}
    rows: list[dict[str, object]] = []
    summary: list[str] = []
    targets = TARGETS.get(args.recipe, [])
    norms = args.norms.split(",")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    procs: dict[str, tuple[subprocess.Popen, float, Optional[IO[str]]]] = {}
    finished: dict[str, tuple[int, float]] = {}
    pending = list(norms)
    while pending or procs:  # at most --jobs runs at once
        while pending and len(procs) < args.jobs:
            norm = pending.pop(0)
            cmd = [sys.executable, "train.py", f"experiment={args.recipe}", f"norm={norm}", f"paths.data_root={args.data_root}",
                   f"paths.output_root={args.output_root}", f"task_name=tta_{args.recipe}_{norm}", *args.overrides]
            print(f"$ OMP_NUM_THREADS={threads}", " ".join(cmd), flush=True)
            log_file = open(out_dir / f"{norm}.log", "w") if args.jobs > 1 else None  # interleaved output is unreadable
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
            procs[norm] = (proc, time.monotonic(), log_file)
        time.sleep(1.0)
        for norm, (proc, t0, log_file) in list(procs.items()):
            if proc.poll() is not None:
                finished[norm] = (proc.returncode, time.monotonic() - t0)
                del procs[norm]
                if log_file is not None:
                    log_file.close()

    for norm in norms:
        rc, job_s = finished[norm]
        tag = f"tta_{args.recipe}_{norm}"
        if rc != 0:
            print(f"run for norm={norm} failed (exit {rc})", file=sys.stderr)
            summary.append(f"| {norm} | failed (exit {rc}) | " + "| " * len(targets) + "| |")
            continue
        found = sorted((REPO / args.output_root / "runs" / tag).glob("*/time_to_accuracy.csv"))
        if not found:
            continue
        curves[norm] = found[-1]
        with open(found[-1], newline="") as fh:
            curve = list(csv.DictReader(fh))
        rows.extend({"norm": norm, **r} for r in curve)
        results = json.loads((found[-1].parent / "results.json").read_text())
        print(f"norm={norm}: final test acc {results.get('test_acc')}, train time {results.get('train_time_s')} s")
        summary.append(_summary_row(norm, curve, targets, results, job_s))
    if not rows:
        print("no curves", file=sys.stderr)
        return 1
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "curves.csv", buf.getvalue())
    png = plot_time_to_accuracy(curves, out_dir / "curves.png", targets, title=f"{args.recipe}: test accuracy vs training time")
    head = "| norm | last-epoch test acc | " + " | ".join(f"{label}: reached after (train / wall)" for _, _, label in targets)
    lines = [
        f"Recipe `{args.recipe}`, overrides: `{' '.join(args.overrides) or 'none'}`; {len(norms)} runs, "
        f"{args.jobs} at a time with {threads} torch thread(s) each, on {platform.node()} ({os.cpu_count()} CPUs); "
        f"generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        head + " | training time (s) | job wall time (s) |",
        "|---" * (4 + len(targets)) + "|",
        *summary,
    ]
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'curves.csv'}, {out_dir / 'summary.md'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
