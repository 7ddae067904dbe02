"""Phase cache: build an expensive artefact (e.g. the MNIST-pretrained student checkpoint) once and
reuse it across jobs, processes and sweeps.

Layout under ``root`` (default ``outputs/cache``)::

    root/<phase>/<key>.lock          filelock.FileLock guarding the entry
    root/<phase>/<key>/model.ckpt    the artefact
    root/<phase>/<key>/meta.json     provenance (phase, key, created_at, build time, caller's meta)
    root/<phase>/<key>/DONE          written last: the entry is valid only if DONE and model.ckpt exist
    root/<phase>/.<key>.build        where the entry is built (see below)

An entry is built inside the lock into its build folder and moved into place only after
``build_fn`` returned, so a crashed or failing build never leaves anything that reads as valid, and
concurrent callers of :meth:`PhaseCache.get_or_create` on the same key build exactly once (the ones
that waited find the finished entry when they re-check inside the lock).

The build folder of an *interrupted* build (killed, or stopped by one of :data:`INTERRUPTIONS`:
``SIGTERM`` / ``SIGINT``, ``KeyboardInterrupt``, ``SystemExit``) is kept: the next build of the same
key gets it back, so a ``build_fn`` that checkpoints into it (:func:`autonorm.phases.fit_phase`
writes ``checkpoints/last.ckpt``) resumes where the last attempt stopped. A key names one config
and one source, so what is there always belongs to the same build. A build that *fails* (any other
exception) has its folder removed: the next attempt starts clean.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock

from .interrupt import RunInterrupted
from .io import _fsync_dir, _fsync_file, _json_default, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["config_key", "PhaseCache", "CKPT_NAME", "DONE_NAME", "META_NAME"]

CKPT_NAME = "model.ckpt"
DONE_NAME = "DONE"
META_NAME = "meta.json"
#: Exceptions that stop a build without it having failed: its build folder is kept to resume from.
INTERRUPTIONS = (RunInterrupted, KeyboardInterrupt, SystemExit)


def config_key(cfg_dict: Mapping[str, Any], length: int = 16) -> str:
    """Stable short hash of a (nested) plain config dict.

    sha256 of its canonical JSON (sorted keys, compact separators), first ``length`` hex characters.
    Independent of key order; ``1`` and ``1.0`` hash differently. Pass plain containers (for an
    OmegaConf config use ``OmegaConf.to_container(cfg, resolve=True)``); paths, numpy values and sets
    are converted.
    """
    canon = json.dumps(
        cfg_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:length]


def _check_name(kind: str, value: str) -> str:
    if not value or not isinstance(value, str) or value in (".", "..") or "/" in value or os.sep in value:
        raise ValueError(f"invalid cache {kind} {value!r}: must be a non-empty name without path separators")
    return value


class PhaseCache:
    """File-system cache of per-phase checkpoints keyed by a config hash (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str] = "outputs/cache") -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PhaseCache(root={str(self.root)!r})"

    def entry_dir(self, phase: str, key: str) -> Path:
        """Folder of one cache entry: ``root/phase/key``."""
        return self.root / _check_name("phase", phase) / _check_name("key", key)

    def path_for(self, phase: str, key: str) -> Path:
        """Where the entry's checkpoint lives (``root/phase/key/model.ckpt``), whether built or not."""
        return self.entry_dir(phase, key) / CKPT_NAME

    def build_dir(self, phase: str, key: str) -> Path:
        """Where the entry is built (``root/phase/.key.build``); kept when a build is interrupted."""
        return self.root / _check_name("phase", phase) / f".{_check_name('key', key)}.build"

    def lock_path(self, phase: str, key: str) -> Path:
        """The lock file guarding the entry: ``root/phase/key.lock``."""
        return self.root / _check_name("phase", phase) / f"{_check_name('key', key)}.lock"

    def get(self, phase: str, key: str) -> Path | None:
        """The checkpoint path if the entry is complete (checkpoint and ``DONE`` exist), else None."""
        ckpt = self.path_for(phase, key)
        if ckpt.is_file() and (ckpt.parent / DONE_NAME).is_file():
            return ckpt
        return None

    def meta(self, phase: str, key: str) -> dict | None:
        """The entry's ``meta.json`` as a dict, or None if the entry is not complete."""
        if self.get(phase, key) is None:
            return None
        try:
            return json.loads((self.entry_dir(phase, key) / META_NAME).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def get_or_create(
        self,
        phase: str,
        key: str,
        build_fn: Callable[[Path], None],
        meta: dict | None = None,
        timeout: float | None = None,
        valid: Callable[[Path], bool] | None = None,
    ) -> Path:
        """Return the cached checkpoint, building it with ``build_fn(build_dir)`` on a miss.

        ``build_fn`` must write ``model.ckpt`` into ``build_dir`` (other files it writes there are
        kept next to the checkpoint). ``build_dir`` is empty, or holds what an interrupted build of
        the same key left there (see the module docstring). The build runs while holding ``root/phase/key.lock``, so concurrent
        callers build once; ``timeout`` (seconds, None = wait forever) bounds the wait for the lock
        and raises ``filelock.Timeout`` when exceeded. If ``build_fn`` raises, the exception
        propagates, no valid entry is left and the lock is released. ``valid(checkpoint)`` (e.g. "the
        file loads") turns an entry that fails it into a miss: it is rebuilt under the lock.
        """
        hit = self._valid_hit(phase, key, valid)
        if hit is not None:
            log.info("phase cache HIT: phase=%s key=%s -> %s", phase, key, hit)
            return hit

        entry = self.entry_dir(phase, key)
        lock_file = self.lock_path(phase, key)
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file), timeout=-1 if timeout is None else timeout)
        t_wait = time.monotonic()
        with lock:
            waited = time.monotonic() - t_wait
            hit = self._valid_hit(phase, key, valid)
            if hit is not None:
                log.info(
                    "phase cache HIT after waiting %.1fs for another builder: phase=%s key=%s -> %s",
                    waited, phase, key, hit,
                )
                return hit
            log.info("phase cache MISS: phase=%s key=%s, building into %s", phase, key, entry)
            return self._build_locked(phase, key, entry, build_fn, meta)

    def _valid_hit(self, phase: str, key: str, valid: Callable[[Path], bool] | None) -> Path | None:
        hit = self.get(phase, key)
        if hit is not None and valid is not None and not valid(hit):
            log.warning("phase cache entry %s cannot be read; rebuilding it", hit)
            print(f"[{phase}] cached checkpoint {hit} cannot be read; rebuilding it")
            return None
        return hit

    def _build_locked(
        self, phase: str, key: str, entry: Path, build_fn: Callable[[Path], None], meta: dict | None
    ) -> Path:
        """Build the entry; caller holds the lock."""
        entry.mkdir(parents=True, exist_ok=True)
        # Drop leftovers of an interrupted earlier build: DONE first, so nothing reads as valid.
        for name in (DONE_NAME, CKPT_NAME, META_NAME):
            try:
                (entry / name).unlink()
            except FileNotFoundError:
                pass

        for stale in entry.parent.glob(f".{key}.build-*"):  # private folders of older versions: never resumable
            shutil.rmtree(stale, ignore_errors=True)
        tmp_dir = self.build_dir(phase, key)
        resumed = tmp_dir.is_dir() and any(tmp_dir.iterdir())
        if resumed:
            print(f"[{phase}] continuing the interrupted build in {tmp_dir}")
        tmp_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        keep = False
        try:
            try:
                build_fn(tmp_dir)
            except BaseException as exc:
                keep = isinstance(exc, INTERRUPTIONS)
                log.error("phase cache build %s: phase=%s key=%s: %s: %s",
                          "INTERRUPTED (kept for the next build)" if keep else "FAILED", phase, key, type(exc).__name__, exc)
                try:
                    entry.rmdir()  # only succeeds if empty
                except OSError:
                    pass
                raise
            built = tmp_dir / CKPT_NAME
            if not built.is_file():
                raise FileNotFoundError(
                    f"phase cache: build_fn for phase={phase} key={key} did not write {CKPT_NAME} "
                    f"into {tmp_dir}"
                )
            build_s = time.monotonic() - t0
            # Extra artefacts first, the checkpoint last (then meta.json, then DONE).
            for item in sorted(tmp_dir.iterdir()):
                if item.name == CKPT_NAME:
                    continue
                target = entry / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
            _fsync_file(built)
            os.replace(built, entry / CKPT_NAME)
            _fsync_dir(entry)
            info: dict[str, Any] = {
                "phase": phase,
                "key": key,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(build_s, 3),  # this attempt's
                "resumed": resumed,  # continued an interrupted build
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            if meta:
                info["meta"] = meta
            atomic_write_json(entry / META_NAME, info)
            atomic_write_text(entry / DONE_NAME, info["created_at"] + "\n")
        finally:
            if not keep:
                shutil.rmtree(tmp_dir, ignore_errors=True)
        ckpt = entry / CKPT_NAME
        log.info("phase cache STORED: phase=%s key=%s -> %s (built in %.1fs)", phase, key, ckpt, build_s)
        return ckpt
