"""Run a time-to-accuracy recipe for several norms and draw their curves on one plot.

    python scripts/time_to_accuracy.py --recipe fast_mnist --norms ln,dyt,autonorm,afn --data-root ../shared/data

Each norm and seed (``--seeds``, three by default) is one ordinary ``train.py experiment=<recipe>
norm=<norm> seed=<seed>`` run (so its folder, curves and checkpoints are where every run's are);
this script only launches them (one after another, or ``--jobs`` at a time) and gathers their
``time_to_accuracy.csv`` into ``outputs/time_to_accuracy/<recipe>/`` (``curves.csv`` and
``curves.png``, with the recipe's targets drawn in) and ``summary.md``: per norm, the last
epoch's test accuracy (mean ± std over seeds) and, per target, when each seed first reached the
target accuracy (training time and the job's whole wall time, mean ± std over the seeds that
reached it). A target counts as met only when every seed reaches its accuracy within its time
(job wall time).
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
from autonorm.pipeline.stats import summary  # noqa: E402
from autonorm.viz.plots import plot_time_to_accuracy  # noqa: E402

TARGETS = {
    "fast_mnist": [(0.99, 300.0, "99% in 5 min")],
    "fast_cifar10": [(0.75, 900.0, "75% in 15 min")],
}


def reached(curve: list[dict[str, str]], acc: float) -> Optional[tuple[float, float]]:
    """(training time, wall time) in s at the first epoch whose test accuracy is >= ``acc``, else None
    (wall time falls back to the training time for curves without it)."""
    for r in curve:
        if float(r["test_acc"]) >= acc:
            train = float(r["train_time_s"])
            return train, float(r["wall_s"]) if r.get("wall_s") else train
    return None


def _spread(values: list[float], digits: int = 0) -> str:
    st = summary(values)
    if st is None:
        return ""
    if st["std"] is None:
        return f"{st['mean']:.{digits}f} (n=1)"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f}"


def target_cell(curves: list[list[dict[str, str]]], acc: float, budget_s: float) -> str:
    """Time to ``acc`` over the seeds' curves: train / wall mean ± std over the seeds that reach it,
    how many do, and "met" only when every seed reaches it within ``budget_s`` of wall time."""
    hits = [reached(c, acc) for c in curves]
    ok = [h for h in hits if h is not None]
    if not ok:
        return f"not reached (0/{len(curves)} seeds); not met"
    met = len(ok) == len(curves) and all(wall <= budget_s for _, wall in ok)
    return (f"{_spread([t for t, _ in ok])} s / {_spread([w for _, w in ok])} s "
            f"({len(ok)}/{len(curves)} seeds); {'met' if met else 'not met'}")


def summary_row(norm: str, curves: list[list[dict[str, str]]], targets: list, results: list[dict], job_s: list[float]) -> str:
    final = [100 * float(c[-1]["test_acc"]) for c in curves if c]
    cells = [target_cell(curves, acc, budget) for acc, budget, _ in targets]
    train = [float(r["train_time_s"]) for r in results if r.get("train_time_s") is not None]
    return (f"| {norm} | {len(curves)} | {_spread(final, 2)} | " + " | ".join(cells)
            + f" | {_spread(train)} | {_spread(job_s)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fast_mnist", help="experiment config (fast_mnist | fast_cifar10)")
    ap.add_argument("--norms", default="ln,dyt,autonorm,afn")
    ap.add_argument("--seeds", default="0,1,2", help="seeds per norm (a target is met only when all reach it)")
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
    table_lines: list[str] = []
    targets = TARGETS.get(args.recipe, [])
    norms = args.norms.split(",")
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    jobs = [(norm, seed) for norm in norms for seed in seeds]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "passive")}
    procs: dict[tuple[str, int], tuple[subprocess.Popen, float, Optional[IO[str]]]] = {}
    finished: dict[tuple[str, int], tuple[int, float]] = {}
    pending = list(jobs)
    while pending or procs:  # at most --jobs runs at once
        while pending and len(procs) < args.jobs:
            norm, seed = pending.pop(0)
            cmd = [sys.executable, "train.py", f"experiment={args.recipe}", f"norm={norm}", f"seed={seed}",
                   f"paths.data_root={args.data_root}", f"paths.output_root={args.output_root}",
                   f"task_name=tta_{args.recipe}_{norm}_s{seed}", *args.overrides]
            print(f"$ OMP_NUM_THREADS={threads}", " ".join(cmd), flush=True)
            log_file = open(out_dir / f"{norm}_s{seed}.log", "w") if args.jobs > 1 else None  # interleaved output is unreadable
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
            procs[(norm, seed)] = (proc, time.monotonic(), log_file)
        time.sleep(1.0)
        for job, (proc, t0, log_file) in list(procs.items()):
            if proc.poll() is not None:
                finished[job] = (proc.returncode, time.monotonic() - t0)
                del procs[job]
                if log_file is not None:
                    log_file.close()

    for norm in norms:
        norm_curves, norm_results, norm_job_s, failed = [], [], [], []
        for seed in seeds:
            rc, job_s = finished[(norm, seed)]
            tag = f"tta_{args.recipe}_{norm}_s{seed}"
            found = sorted((REPO / args.output_root / "runs" / tag).glob("*/time_to_accuracy.csv"))
            if rc != 0 or not found:
                print(f"run for norm={norm} seed={seed} failed (exit {rc})", file=sys.stderr)
                failed.append(seed)
                continue
            curves[f"{norm} s{seed}"] = found[-1]
            with open(found[-1], newline="") as fh:
                curve = list(csv.DictReader(fh))
            rows.extend({"norm": norm, "seed": seed, **r} for r in curve)
            results = json.loads((found[-1].parent / "results.json").read_text())
            print(f"norm={norm} seed={seed}: final test acc {results.get('test_acc')}, train time {results.get('train_time_s')} s")
            norm_curves.append(curve)
            norm_results.append(results)
            norm_job_s.append(job_s)
        if failed:  # a target is met only when every seed reaches it: a failed seed cannot
            table_lines.append(f"| {norm} | {len(norm_curves)} | failed seeds {', '.join(map(str, failed))} | "
                           + " | ".join("not met" for _ in targets) + " | | |")
        elif norm_curves:
            table_lines.append(summary_row(norm, norm_curves, targets, norm_results, norm_job_s))
    if not rows:
        print("no curves", file=sys.stderr)
        return 1
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "curves.csv", buf.getvalue())
    png = plot_time_to_accuracy(curves, out_dir / "curves.png", targets, title=f"{args.recipe}: test accuracy vs training time")
    head = "| norm | seeds | last-epoch test acc (%) | " + " | ".join(
        f"{label}: time to {100 * acc:g}%, train / wall (s)" for acc, _, label in targets)
    lines = [
        f"Recipe `{args.recipe}`, overrides: `{' '.join(args.overrides) or 'none'}`; {len(norms)} norms x seeds "
        f"{', '.join(map(str, seeds))}, {args.jobs} run(s) at a time with {threads} torch thread(s) each, on "
        f"{platform.node()} ({os.cpu_count()} CPUs); generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "Mean ± sample std over seeds; a time to target averages the seeds that reached it (k/n seeds); "
        "a target is met only when every seed reaches its accuracy within its wall time.",
        "",
        head + " | training time (s) | job wall time (s) |",
        "|---" * (5 + len(targets)) + "|",
        *table_lines,
    ]
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out_dir / 'curves.csv'}, {out_dir / 'summary.md'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
