"""Atomic file writes and run-folder markers.

Every file the pipeline produces is first written to a temporary file in the *same directory* as its
destination, flushed and fsync'ed, and then moved onto the destination with :func:`os.replace` (atomic
on POSIX within one file system).  A reader therefore sees either the old file or the complete new
one, never a half-written file, even if the writer crashes or is killed.

Run-folder markers (see the "Run folder" section of the interface contract):

- ``COMPLETED``: JSON, written last and atomically by a training run that finished.
- ``FAILED``: text (the error), written by a run that raised.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

COMPLETED = "COMPLETED"
FAILED = "FAILED"

__all__ = [
    "COMPLETED",
    "FAILED",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "mark_completed",
    "mark_failed",
    "is_completed",
]


def _fsync_file(path: Path) -> None:
    """Flush a file's content to disk."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry (makes a rename durable); silently skipped where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    """A unique hidden temp path next to ``path`` that keeps its suffix (``.png`` stays ``.png``)."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.stem}.tmp-{token}{path.suffix}")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsync'ed and renamed onto ``path``.

    The caller writes the complete file to the yielded path (any writer works: ``open``,
    ``torch.save``, ``savefig`` ... the temp name keeps the destination's suffix). If the body raises,
    the temporary file is removed, ``path`` is left untouched, and the exception propagates.
    Parent directories are created as needed.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temporary file {tmp}")
        _fsync_file(tmp)
        os.replace(tmp, dest)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dest.parent)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path``; returns the destination path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    """JSON fallback for common non-JSON types (paths, numpy / torch scalars and arrays, sets)."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy arrays / scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (paths, numpy and torch values are converted)."""
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """Atomically ``torch.save(obj, path)`` (torch is imported lazily)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def mark_completed(run_dir: PathLike, info: dict | None = None) -> Path:
    """Write the ``COMPLETED`` marker (JSON: ``completed_at`` plus ``info``) atomically.

    Call this last, after ``results.json`` and the checkpoints are written. A stale ``FAILED``
    marker left by an earlier attempt in the same folder is removed.
    """
    run = Path(run_dir)
    payload: dict[str, Any] = {"completed_at": _now()}
    if info:
        payload.update(info)
    out = atomic_write_json(run / COMPLETED, payload)
    try:
        (run / FAILED).unlink()
    except FileNotFoundError:
        pass
    return out


def mark_failed(run_dir: PathLike, error: str) -> Path:
    """Write the ``FAILED`` marker atomically; its first line should summarise the error."""
    text = str(error)
    if not text.endswith("\n"):
        text += "\n"
    return atomic_write_text(Path(run_dir) / FAILED, text)


def is_completed(run_dir: PathLike) -> bool:
    """True if ``run_dir`` holds a ``COMPLETED`` marker."""
    return (Path(run_dir) / COMPLETED).is_file()
