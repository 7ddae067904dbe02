"""File-system pipeline utilities: atomic writes, run markers, the phase cache and the results table.

Touches the file system only (no models, norms, data or tasks are imported here).
"""

from .cache import PhaseCache, config_key
from .io import (
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    is_completed,
    is_failed,
    mark_completed,
    mark_failed,
    read_marker,
)
from .table import TablePaths, build_report, collect_runs, write_table

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "mark_completed",
    "mark_failed",
    "is_completed",
    "is_failed",
    "read_marker",
    "config_key",
    "PhaseCache",
    "TablePaths",
    "build_report",
    "collect_runs",
    "write_table",
]
