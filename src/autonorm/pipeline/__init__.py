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
    mark_completed,
    mark_failed,
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
    "config_key",
    "PhaseCache",
    "TablePaths",
    "build_report",
    "collect_runs",
    "write_table",
]
