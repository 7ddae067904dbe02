"""``python -m autonorm.compare``: the results table of any set of finished runs.

    python -m autonorm.compare outputs/table/mini
    python -m autonorm.compare outputs/runs/train/run_a outputs/runs/train/run_b --out report/
    python -m autonorm.compare outputs/multirun/2026-11-23 --baseline LN-Finetune --no-latency
    python -m autonorm.compare outputs/table/mini --family "AutoNorm-soft-Finetune,AFN-Finetune:LN-Finetune,DyT-Finetune"

Rows are configurations (runs that differ by seed alone) made by one code version (source hash,
named in the Code column; ``--pool-code`` pools versions in one flagged row); cells are mean ± std over seeds; the
rows of one data set are compared pairwise by seed (paired t-test, Holm-adjusted; every pair, every
row against ``--baseline``, or the planned pairs of ``--family``); CIFAR-10-C is
summarised over complete, equally sourced cells; latency and throughput of every row's model are
measured together now (see :mod:`autonorm.pipeline.table`). Writes summary_results.{csv,md,png}
and prints the Markdown. Exit status 0, 1 for a missing folder, 2 for runs of several data sets
without ``--allow-mixed`` or a bad option.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from autonorm.pipeline.collect import MixedDataError
from autonorm.pipeline.stats import family_pairs
from autonorm.pipeline.table import MCE_BASELINE, write_table
from autonorm.runtime import tune_malloc


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m autonorm.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="run folders or sweep folders (searched recursively)")
    ap.add_argument("--out", default=None, help="where summary_results.* go (default: the first folder)")
    ap.add_argument("--allow-mixed", action="store_true", help="accept runs of several data sets in one table")
    ap.add_argument("--baseline", default=None, help="compare every row to this row only (default: every pair)")
    ap.add_argument("--family", action="append", default=None, metavar="A1,A2:B1,B2",
                    help="planned comparisons: each row on the left against each row on the right (repeatable; "
                         "replaces every pair / --baseline; fewer tests confirm smaller differences)")
    ap.add_argument("--mce-baseline", default=MCE_BASELINE, help=f"row the CIFAR-10-C mCE is relative to (default {MCE_BASELINE})")
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate of the comparisons (Holm)")
    ap.add_argument("--pool-code", action="store_true",
                    help="pool runs of one configuration made by different code in one row (flagged); default: a row per code")
    ap.add_argument("--no-latency", action="store_true", help="skip measuring the rows' latency and throughput")
    ap.add_argument("--batch-sizes", type=_ints, default=[1, 256], help="latency,throughput batch sizes (default 1,256)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the latency measurement (default: all)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds of the latency measurement (default 7)")
    ap.add_argument("--method-order", default="", help="comma-separated methods to list first")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    tune_malloc()  # latency measured as in the training processes that write the tables
    if not 0 < args.alpha < 1:
        print(f"error: --alpha must be in (0, 1) (got {args.alpha})", file=sys.stderr)
        return 2
    try:
        pairs = family_pairs(args.family) if args.family else None
    except ValueError as exc:
        print(f"error: --family: {exc}", file=sys.stderr)
        return 2
    if pairs is not None and args.baseline is not None:
        print("error: give --family or --baseline, not both", file=sys.stderr)
        return 2
    try:
        paths = write_table(
            *args.folders, out_dir=args.out, allow_mixed=args.allow_mixed, baseline=args.baseline, pairs=pairs,
            mce_baseline=args.mce_baseline, alpha=args.alpha, split_code=not args.pool_code, measure_latency=not args.no_latency,
            latency_batch_sizes=args.batch_sizes, threads=args.threads, rounds=args.rounds,
            method_order=[m for m in args.method_order.split(",") if m],
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MixedDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(paths.md.read_text(encoding="utf-8"))
    print(f"wrote {paths.csv}\nwrote {paths.md}\nwrote {paths.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
