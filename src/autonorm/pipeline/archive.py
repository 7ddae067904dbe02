"""Committed result archives: a sweep's small result files kept in the repository.

``collect(sweep_dir, archive_dir)`` copies each *completed* run's small files (:data:`RUN_FILES`:
results, robustness, profile, metrics, resolved config, identity, the ``COMPLETED`` marker and
the job's Hydra overrides) into ``archive_dir/<run folder>/``, the same relative path as in the
sweep (replacing an archived run of the same job, i.e. the same overrides), and records the
sweep's expected jobs (expanded from Hydra's ``multirun.yaml`` with the basic sweeper's own
splitting; the union over every collect) in ``archive_dir/expected_jobs.json``. A table rebuilt from the
archive alone therefore knows which jobs are missing (:func:`coverage`, :func:`render_coverage`).

``restore(archive_dir, sweep_dir)`` copies archived runs back into a sweep folder where that run
is not completed there, so re-running the same sweep command skips them (``resume=auto`` skips a
folder with ``COMPLETED``) and only the missing jobs train: a sweep stopped half-way continues
from the committed results. Checkpoints are never archived. The run folders carry their
``identity.json``, so the rerun skips a restored run only when its configuration *and* code (source
hash) equal the new job's (:func:`autonorm.pipeline.runfolder.plan_run`); after a code change the
job is refused with the difference named, and :func:`other_code` lists such runs beforehand. Jobs
are matched by their Hydra overrides (``.hydra/overrides.yaml``), whatever their folder names.

An archive keeps no checkpoints, so its rows' latency can only be measured where the sweep folder
still is. :func:`save_latency` keeps such a measurement in ``archive_dir/latency.json`` with its
machine and time and, per row, the archived run whose checkpoint was measured (folder and a digest
of its ``identity.json``); :func:`load_latency` gives it back for the rows whose measured run is
still archived unchanged, so the table is rebuilt from the repository alone, latency included, and
a row whose run was replaced (other code, another config) gets no figure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

from .io import COMPLETED, atomic_write_json, atomic_write_text

__all__ = [
    "EXPECTED_NAME",
    "LATENCY_NAME",
    "RUN_FILES",
    "collect",
    "coverage",
    "expected_jobs",
    "load_latency",
    "other_code",
    "render_coverage",
    "restore",
    "save_latency",
    "write_archive_table",
]

#: the files of a run folder that are archived (small, text); any that a run lacks is skipped
RUN_FILES: tuple[str, ...] = (
    "results.json", "robustness.json", "profile.json", "metrics.csv", "config.yaml", "identity.json",
    "time_to_accuracy.csv", COMPLETED, ".hydra/overrides.yaml",
)
EXPECTED_NAME = "expected_jobs.json"
LATENCY_NAME = "latency.json"
_SKIP = frozenset({"checkpoints", "wandb", "__pycache__"})


def _run_dirs(root: Path) -> list[Path]:
    """Completed run folders under ``root`` (``COMPLETED`` and ``results.json``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP and not d.startswith("."))
        if COMPLETED in filenames and "results.json" in filenames:
            found.append(Path(dirpath))
    return found


def _copy_if_changed(src: Path, dst: Path) -> bool:
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def _copy_run(src: Path, dst: Path) -> int:
    """Mirror ``src``'s :data:`RUN_FILES` into ``dst`` (a file ``src`` no longer has is removed)."""
    n = 0
    for name in RUN_FILES:
        if (src / name).is_file():
            n += _copy_if_changed(src / name, dst / name)
        elif (dst / name).is_file():
            (dst / name).unlink()
            n += 1
    return n


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def expected_jobs(multirun_yaml: str | os.PathLike[str]) -> list[list[str]]:
    """Every job's override list of the sweep described by Hydra's ``multirun.yaml``.

    The same expansion as Hydra's basic sweeper: ``hydra.sweeper.params`` then the command-line
    task overrides, parsed by Hydra's override parser and split into their cartesian product.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = _load_yaml(Path(multirun_yaml))
    hydra = cfg.get("hydra", {})
    params = [f"{k}={v}" for k, v in ((hydra.get("sweeper") or {}).get("params") or {}).items()]
    task = list((hydra.get("overrides") or {}).get("task") or [])
    overrides = OverridesParser.create().parse_overrides(params + task)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def _excluded_keys(multirun_yaml: Path) -> list[str]:
    """The override keys that do not name a run folder (``hydra.job.config.override_dirname.exclude_keys``)."""
    cfg = _load_yaml(multirun_yaml).get("hydra", {})
    return list((((cfg.get("job") or {}).get("config") or {}).get("override_dirname") or {}).get("exclude_keys") or [])


def _identity(job: Iterable[str], excluded: Iterable[str]) -> frozenset[str]:
    """A job's overrides without the excluded keys (e.g. the output root): what makes it that job."""
    drop = set(excluded)
    return frozenset(o for o in job if o.split("=", 1)[0].lstrip("+~") not in drop)


def collect(sweep_dir: str | os.PathLike[str], archive_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy the completed runs of ``sweep_dir`` into ``archive_dir`` (see module doc).

    Returns ``{"runs": n completed runs, "files": n files written}``. Files that did not change
    are not rewritten, so collecting twice changes nothing. The expected jobs are recorded from
    ``sweep_dir/multirun.yaml`` when it exists, added to those already recorded: a sweep continued
    with a subset of its jobs (``ROWS=...``, one seed) leaves the whole table's record, so its
    coverage never reads complete too early. (To shrink a table on purpose, delete
    ``expected_jobs.json`` and collect again.)
    """
    sweep, archive = Path(sweep_dir), Path(archive_dir)
    if not sweep.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {sweep}")
    archive.mkdir(parents=True, exist_ok=True)
    runs = _run_dirs(sweep)
    multirun = sweep / "multirun.yaml"
    excluded = _excluded_keys(multirun) if multirun.is_file() else _record(archive).get("excluded_keys", [])
    written = 0
    kept = {job: run for run in _run_dirs(archive) if (job := _job_of(run, excluded)) is not None}
    for run in runs:
        dst = archive / run.relative_to(sweep)
        job = _job_of(run, excluded)
        stale = kept.get(job) if job is not None else None
        if stale is not None and stale != dst and stale.is_dir():  # the same job, archived under another folder name
            shutil.rmtree(stale)
        written += _copy_run(run, dst)
        if job is not None:
            kept[job] = dst
    if multirun.is_file():
        jobs = {frozenset(_identity(j, excluded)) for j in expected_jobs(multirun)}
        old = _record(archive)
        if old.get("excluded_keys", None) == excluded:  # a partial rerun (fewer rows or seeds) adds, never drops
            jobs |= {frozenset(j) for j in old.get("jobs", [])}
        record = {"excluded_keys": excluded, "jobs": sorted(sorted(j) for j in jobs)}
        if old != record:
            atomic_write_json(archive / EXPECTED_NAME, record)
            written += 1
    return {"runs": len(runs), "files": written}


def restore(archive_dir: str | os.PathLike[str], sweep_dir: str | os.PathLike[str]) -> int:
    """Copy archived runs into ``sweep_dir`` where that run folder is not completed; return how many."""
    archive, sweep = Path(archive_dir), Path(sweep_dir)
    if not archive.is_dir():
        return 0
    n = 0
    for run in _run_dirs(archive):
        dst = sweep / run.relative_to(archive)
        if (dst / COMPLETED).is_file():
            continue
        _copy_run(run, dst)
        n += 1
    return n


def other_code(archive_dir: str | os.PathLike[str], current: Optional[str] = None) -> list[tuple[str, Optional[str]]]:
    """Archived completed runs made by code other than ``current`` (default: this checkout's source
    hash), as ``(run folder relative to the archive, its source hash or None)``. A rerun of the
    sweep refuses these jobs rather than reusing them as results of the current code."""
    from .identity import read_identity, source_hash

    current = current or source_hash()
    archive = Path(archive_dir)
    out = []
    for run in _run_dirs(archive) if archive.is_dir() else []:
        src = (read_identity(run) or {}).get("source_hash")
        if src != current:
            out.append((str(run.relative_to(archive)), src))
    return out


def _record(archive: Path) -> dict[str, Any]:
    path = archive / EXPECTED_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def _job_of(run: Path, excluded: Iterable[str]) -> Optional[frozenset[str]]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    items = _load_yaml(path)
    return _identity((str(i) for i in items), excluded) if isinstance(items, list) else None


def coverage(archive_dir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
    """``{"expected": n, "completed": n, "missing": [override lists]}``, or None without a record."""
    record = _record(Path(archive_dir))
    if not record:
        return None
    excluded = record.get("excluded_keys", [])
    expected = [frozenset(j) for j in record["jobs"]]
    done = {job for job in (_job_of(run, excluded) for run in _run_dirs(Path(archive_dir))) if job is not None}
    missing = [sorted(j) for j in expected if j not in done]
    return {"expected": len(expected), "completed": len(expected) - len(missing), "missing": missing}


def render_coverage(archive_dir: str | os.PathLike[str]) -> str:
    """One Markdown paragraph: whether the table is whole, and the missing jobs if not."""
    cov = coverage(archive_dir)
    if cov is None:
        return "**Coverage unknown**: no record of the sweep's expected jobs (`expected_jobs.json`).\n"
    if not cov["missing"]:
        return f"**Complete**: all {cov['expected']} expected jobs finished.\n"
    lines = [
        f"**Incomplete: {cov['completed']} of {cov['expected']} expected jobs finished; "
        f"{len(cov['missing'])} missing** (re-run the same command to continue):",
        "",
    ]
    lines += [f"- `{' '.join(job)}`" for job in cov["missing"]]
    return "\n".join(lines) + "\n"


def write_archive_table(archive_dir: str | os.PathLike[str]) -> Path:
    """The table of the archive (:func:`autonorm.pipeline.table.write_table`) headed by its coverage;
    latency columns only from a kept measurement (:func:`load_latency`): an archive keeps no
    checkpoints to measure."""
    from .table import write_table

    paths = write_table(archive_dir, measure_latency=False, latency=lambda rows: load_latency(archive_dir, rows))
    md = paths.md.read_text(encoding="utf-8")
    atomic_write_text(paths.md, render_coverage(archive_dir) + "\n" + md)
    return paths.md


def _identity_digest(run: Path) -> Optional[str]:
    try:
        return hashlib.sha256((run / "identity.json").read_bytes()).hexdigest()
    except OSError:
        return None


def save_latency(archive_dir: str | os.PathLike[str], latency: dict[str, Any], measured: dict[str, str | os.PathLike[str]]) -> Path:
    """Keep ``latency`` (:func:`autonorm.pipeline.table.measure_rows` of the archive's rows) in
    ``archive_dir/latency.json``, with the machine, the UTC time and, per row key in ``measured``,
    the archived run folder whose checkpoint was measured (and the digest of its ``identity.json``);
    rows of ``measured`` without a figure in ``latency`` are left out."""
    from autonorm.eval.machine import machine_info

    archive = Path(archive_dir)
    figures = latency.get("models") or {}
    runs = {}
    for key, run in measured.items():
        if key not in figures:
            continue
        run = Path(run)
        runs[key] = {"run": str(run.resolve().relative_to(archive.resolve())), "identity_sha256": _identity_digest(run)}
    record = {"measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
              "latency": latency, "runs": runs}
    atomic_write_json(archive / LATENCY_NAME, record)
    return archive / LATENCY_NAME


def load_latency(archive_dir: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The measurement kept by :func:`save_latency` for ``rows`` (the table's rows, with their
    ``key`` and ``label``): ``measure_rows``'s dict holding only the rows whose measured run is still
    in the archive with the same ``identity.json``, plus ``measured_at`` and ``machine`` (the CPU
    model); rows whose figure no longer holds are listed in ``"skipped"``. None when the archive
    keeps no measurement."""
    archive = Path(archive_dir)
    try:
        record = json.loads((archive / LATENCY_NAME).read_text(encoding="utf-8"))
        latency, runs = dict(record["latency"]), record["runs"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{archive / LATENCY_NAME}: unreadable latency record ({type(exc).__name__}: {exc})") from exc
    rows = list(rows)
    labels = {row["label"] for row in rows}
    models = {}
    skipped = {label: why for label, why in (latency.get("skipped") or {}).items() if label in labels}
    for row in rows:
        key, info = row["key"], runs.get(row["key"])
        if info is None or key not in (latency.get("models") or {}):
            continue
        digest = _identity_digest(archive / info["run"])
        if digest is None or digest != info.get("identity_sha256"):
            skipped[row["label"]] = f"the measured run {info['run']} is no longer archived as it was measured"
            continue
        models[key] = latency["models"][key]
    latency["models"] = models
    latency["skipped"] = skipped
    latency["measured_at"] = record.get("measured_at")
    latency["machine"] = (record.get("machine") or {}).get("cpu_model")
    return latency
