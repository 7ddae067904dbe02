"""Run a time-to-accuracy recipe for several norms and draw their curves on one plot.

    python scripts/time_to_accuracy.py --recipe fast_mnist --norms ln,dyt,autonorm,afn --data-root ../shared/data

Each norm is one ordinary ``train.py experiment=<recipe> norm=<norm>`` run (so its folder, curves
and checkpoints are where every run's are); this script only launches them one after another
and gathers their ``time_to_accuracy.csv`` into ``outputs/time_to_accuracy/<recipe>/``
(``curves.csv`` and ``curves.png``, with the recipe's targets drawn in).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from autonorm.pipeline.io import atomic_write_text  # noqa: E402
from autonorm.viz.plots import plot_time_to_accuracy  # noqa: E402

TARGETS = {
    "fast_mnist": [(0.99, 300.0, "99% in 5 min")],
    "fast_cifar10": [(0.75, 900.0, "75% in 15 min")],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="fast_mnist", help="experiment config (fast_mnist | fast_cifar10)")
    ap.add_argument("--norms", default="ln,dyt,autonorm,afn")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--output-root", default="outputs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()

    out_dir = REPO / args.output_root / "time_to_accuracy" / args.recipe
    curves: dict[str, Path] = {}
    rows: list[dict[str, object]] = []
    for norm in args.norms.split(","):
        tag = f"tta_{args.recipe}_{norm}"
        cmd = [sys.executable, "train.py", f"experiment={args.recipe}", f"norm={norm}", f"paths.data_root={args.data_root}",
               f"paths.output_root={args.output_root}", f"task_name={tag}", *args.overrides]
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print(f"run for norm={norm} failed; continuing", file=sys.stderr)
            continue
        found = sorted((REPO / args.output_root / "runs" / tag).glob("*/time_to_accuracy.csv"))
        if not found:
            continue
        curves[norm] = found[-1]
        with open(found[-1], newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append({"norm": norm, **r})
        results = json.loads((found[-1].parent / "results.json").read_text())
        print(f"norm={norm}: final test acc {results.get('test_acc')}, train time {results.get('train_time_s')} s")
    if not rows:
        print("no curves", file=sys.stderr)
        return 1
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "curves.csv", buf.getvalue())
    png = plot_time_to_accuracy(curves, out_dir / "curves.png", TARGETS.get(args.recipe, ()), title=f"{args.recipe}: test accuracy vs training time")
    print(f"wrote {out_dir / 'curves.csv'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
