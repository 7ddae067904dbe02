"""Keep a resumed run's whole ``metrics.csv``.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts. Before a resume,
:func:`stash_metrics` moves the rows of earlier attempts to ``metrics.before_resume.csv`` (rows
logged after the checkpoint the run resumes from are dropped: they are logged again); after the
resumed run has logged its own rows, :func:`merge_metrics` writes both into ``metrics.csv``, so the
curves and the table see every step. A resume that dies before the merge is folded into the
stash by the next :func:`stash_metrics`; nothing is lost.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from .io import atomic_write_text

METRICS = "metrics.csv"
STASH = "metrics.before_resume.csv"
_META = ("step", "epoch")

Row = dict[str, str]


def _read(path: Path) -> tuple[list[str], list[Row]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = [{k: v for k, v in r.items() if k is not None and v not in (None, "")} for r in reader]
            return list(reader.fieldnames or []), rows
    except (OSError, csv.Error):
        return [], []


def _step(row: Row) -> Optional[int]:
    try:
        return int(float(row.get("step", "")))
    except ValueError:
        return None


def _combine(old: tuple[list[str], list[Row]], new: tuple[list[str], list[Row]]) -> tuple[list[str], list[Row]]:
    """Old rows, except those a new row logs again (same step, a metric in common), then the new rows."""
    logged = {}
    for row in new[1]:
        logged.setdefault(_step(row), set()).update(k for k in row if k not in _META)
    kept = [r for r in old[1] if not (logged.get(_step(r), set()) & {k for k in r if k not in _META})]
    header = list(old[0]) + [k for k in new[0] if k not in old[0]]
    return header, kept + new[1]


def _write(path: Path, header: list[str], rows: list[Row]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def stash_metrics(run_dir: Path, resume_step: int) -> None:
    """Before resuming at ``resume_step``: move every earlier row into the stash (see module docstring)."""
    run_dir = Path(run_dir)
    current, stash = run_dir / METRICS, run_dir / STASH
    if not current.exists() and not stash.exists():
        return
    header, rows = _combine(_read(stash), _read(current))
    rows = [r for r in rows if (_step(r) or 0) <= resume_step]
    _write(stash, header, rows)
    current.unlink(missing_ok=True)


def merge_metrics(run_dir: Path) -> None:
    """After the resumed run logged its rows: stash + new rows -> ``metrics.csv``; the stash goes."""
    run_dir = Path(run_dir)
    stash = run_dir / STASH
    if not stash.exists():
        return
    header, rows = _combine(_read(stash), _read(run_dir / METRICS))
    _write(run_dir / METRICS, header, rows)
    stash.unlink()
