#!/usr/bin/env python
"""Build the baseline table of a sweep: summary_results.{csv,md,png}.

Usage: python scripts/make_table.py SWEEP_DIR [--out DIR]

Prints the Markdown table. Exit code 0 even when some jobs failed (they are listed in the table),
1 when SWEEP_DIR does not exist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from autonorm.pipeline.table import write_table
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from autonorm.pipeline.table import write_table


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description="Aggregate a sweep's run folders into the baseline table.")
    parser.add_argument("sweep_dir", help="folder holding the run folders (searched recursively)")
    parser.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR)")
    args = parser.parse_args(argv)

    sweep = Path(args.sweep_dir)
    if not sweep.is_dir():
        print(f"error: sweep folder not found (or not a folder): {sweep}", file=sys.stderr)
        return 1
    paths = write_table(sweep, out_dir=args.out)
    print(paths.md.read_text(encoding="utf-8"))
    print(f"wrote {paths.csv}\nwrote {paths.md}\nwrote {paths.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
