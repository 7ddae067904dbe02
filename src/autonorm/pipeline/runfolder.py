"""What to do with a run folder before training: start, resume, skip, or refuse.

:func:`plan_run` reads only what earlier attempts left (``identity.json``, ``results.json``, the
markers and ``checkpoints/*.ckpt``) and changes nothing, so a refused or failing start leaves the
folder as it was. The rules:

* ``resume=never``: train from scratch (:func:`clear_for_retraining` then removes old results,
  markers, checkpoints and metrics).
* A folder with results, markers or checkpoints but no ``identity.json``, or whose stored identity
  differs from the new one (config or source): refused with one line naming the first
  differences and the two ways out (``resume=never``, or other overrides for a new folder).
* ``COMPLETED`` with a readable ``results.json``: skipped (its results are returned). A ``COMPLETED``
  marker without results is an unfinished run.
* Unfinished: resumed from the readable checkpoint with the highest step (``last.ckpt`` when it is
  readable); when ``last.ckpt`` exists but no checkpoint can be read, refused (``resume=never``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from autonorm.errors import AutoNormError

from .identity import IDENTITY_FILE, describe_differences, read_identity
from .io import COMPLETED, FAILED

INTERRUPTED = "INTERRUPTED"
RESULTS = "results.json"


class RunRefused(AutoNormError):
    """The run folder holds something the new run must not reuse or overwrite."""


@dataclass
class Plan:
    """``skip``: results of the identical completed run; ``resume_from``: checkpoint to continue from."""

    skip: Optional[dict[str, Any]] = None
    resume_from: Optional[Path] = None
    resume_step: int = 0
    note: str = ""


def checkpoint_step(path: Path) -> Optional[int]:
    """``global_step`` stored in a checkpoint, or None when the file cannot be read."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(ckpt["global_step"])
    except Exception:
        return None


def _results(run_dir: Path) -> Optional[dict[str, Any]]:
    try:
        obj = json.loads((run_dir / RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _has_state(run_dir: Path) -> bool:
    """Whether the folder holds anything a run could reuse (a failed start without checkpoints does not)."""
    return any((run_dir / m).exists() for m in (RESULTS, COMPLETED)) or any((run_dir / "checkpoints").glob("*.ckpt"))


def plan_run(run_dir: Path, identity: Mapping[str, Any], resume: str) -> Plan:
    """Decide how to use ``run_dir`` for the run with ``identity`` (see the module docstring)."""
    run_dir = Path(run_dir)
    if resume == "never" or not _has_state(run_dir):
        return Plan()
    ways_out = "rerun with resume=never to train it from scratch here, or change the overrides to train in a new folder"
    stored = read_identity(run_dir)
    if stored is None:
        raise RunRefused(f"{run_dir} holds a run without {IDENTITY_FILE}, so it cannot be shown to match this configuration; {ways_out}")
    if (stored.get("config_hash"), stored.get("source_hash")) != (identity.get("config_hash"), identity.get("source_hash")):
        raise RunRefused(f"{run_dir} holds a run of another configuration or code ({describe_differences(stored, identity)}); {ways_out}")
    results = _results(run_dir)
    if (run_dir / COMPLETED).is_file() and results is not None:
        return Plan(skip=results)
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    readable = [(step, p) for p in ckpts if (step := checkpoint_step(p)) is not None]
    last = run_dir / "checkpoints" / "last.ckpt"
    if not readable:
        if last.exists():
            raise RunRefused(f"{last} cannot be read (truncated?) and no other checkpoint can; rerun with resume=never to train from scratch")
        return Plan(note="unfinished run without a checkpoint: training from the start")
    step, path = max(readable, key=lambda sp: (sp[0], sp[1].name == "last.ckpt"))
    note = ""
    if last.exists() and path != last and checkpoint_step(last) is None:
        note = f"{last.name} cannot be read (truncated?); resuming from {path.name} (step {step}) instead"
    return Plan(resume_from=path, resume_step=step, note=note)


def clear_stale_markers(run_dir: Path) -> None:
    """Remove the markers of an earlier unfinished attempt (its checkpoints and metrics stay)."""
    for name in (COMPLETED, FAILED, INTERRUPTED):
        (Path(run_dir) / name).unlink(missing_ok=True)


def clear_for_retraining(run_dir: Path) -> None:
    """``resume=never``: remove results, markers, checkpoints and metrics of earlier runs."""
    run_dir = Path(run_dir)
    clear_stale_markers(run_dir)
    for name in (RESULTS, "metrics.csv", "metrics.before_resume.csv"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
