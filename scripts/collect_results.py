#!/usr/bin/env python
"""Keep a sweep's small result files in the repository and rebuild its table from them.

Usage:
  python scripts/collect_results.py collect SWEEP_DIR ARCHIVE_DIR   # copy finished runs, then write the table
  python scripts/collect_results.py restore ARCHIVE_DIR SWEEP_DIR   # before re-running a sweep: reuse them
  python scripts/collect_results.py table ARCHIVE_DIR               # rebuild the table from the archive alone

``collect`` copies each completed run's results.json, robustness.json, profile.json,
metrics.csv, config.yaml, identity.json, COMPLETED and .hydra/overrides.yaml into
ARCHIVE_DIR/<run folder>/ (e.g. docs/results/recipe/) and records the sweep's expected jobs, then
writes ARCHIVE_DIR/summary_results.{md,csv,png}: the table headed by how many expected jobs
finished and which are missing. ``restore`` puts archived runs back into SWEEP_DIR (where not
completed there), so the same sweep command skips them when their configuration and code
(source hash) are this checkout's; it lists the archived runs of other code, which the sweep
refuses instead of reusing. See autonorm/pipeline/archive.py.
Exit status 1 when a folder is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from autonorm.pipeline import archive
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from autonorm.pipeline import archive


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="copy a sweep's finished runs into an archive and write its table")
    c.add_argument("sweep_dir")
    c.add_argument("archive_dir")
    r = sub.add_parser("restore", help="copy archived runs back into a sweep folder")
    r.add_argument("archive_dir")
    r.add_argument("sweep_dir")
    t = sub.add_parser("table", help="write the table of an archive")
    t.add_argument("archive_dir")
    args = parser.parse_args(argv)

    if args.cmd == "restore":
        n = archive.restore(args.archive_dir, args.sweep_dir)
        print(f"restored {n} finished run(s) from {args.archive_dir} into {args.sweep_dir}")
        stale = archive.other_code(args.archive_dir)
        if stale:
            print(f"note: {len(stale)} archived run(s) were made by other code than this checkout's; the sweep "
                  "will refuse those jobs (naming the changed files) and the table keeps their results under their "
                  "own code version. To retrain them with this code, add resume=never for those jobs:")
            for rel, src in stale:
                print(f"  {rel} (source {src[:8] if src else 'unknown'})")
        return 0
    if args.cmd == "collect":
        if not Path(args.sweep_dir).is_dir():
            print(f"error: sweep folder not found: {args.sweep_dir}", file=sys.stderr)
            return 1
        stats = archive.collect(args.sweep_dir, args.archive_dir)
        print(f"collected {stats['runs']} finished run(s) into {args.archive_dir} ({stats['files']} file(s) written)")
    if not Path(args.archive_dir).is_dir():
        print(f"error: archive folder not found: {args.archive_dir}", file=sys.stderr)
        return 1
    md = archive.write_archive_table(args.archive_dir)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
