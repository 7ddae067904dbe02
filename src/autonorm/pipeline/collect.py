"""Collect finished runs from folders and group them into table rows (like with like).

Reads only what training runs leave on disk: ``results.json``, ``config.yaml`` (the resolved
config), ``COMPLETED`` / ``FAILED``, ``.hydra/``, ``robustness.json``. A row is every run whose
configuration is the same except for the seed: :func:`group_key` prefers the run's stored
identity (``results.json["identity"]["config_hash_without_seed"]``) and otherwise hashes the
resolved ``config.yaml`` without the seed and the keys that cannot change a number
(:data:`IGNORED_KEYS`). Runs of one row therefore differ by seed alone.

Each run also names the code it ran (:func:`code_of`: the source hash, git commit and dirty flag
of its identity). Rows are split by source hash as well: runs of one configuration made by
different code are different rows, labelled with the code (``LN-Finetune [code 1a2b3c4d]``), so
results of different code are never pooled silently. ``split_code=False`` pools them instead and
flags such a row as mixed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .io import COMPLETED, FAILED

__all__ = [
    "IGNORED_KEYS",
    "MixedDataError",
    "RESULTS_NAME",
    "check_data_sets",
    "code_label",
    "code_of",
    "collect_runs",
    "flat_config",
    "group_key",
    "group_runs",
    "identity_config",
    "number",
]

RESULTS_NAME = "results.json"

#: Folders never searched for runs (besides hidden ones such as ``.hydra``/``.submitit``).
SKIP_DIRS = frozenset({"checkpoints", "wandb", "__pycache__"})

#: Dotted config keys (and their sub-keys) left out of a row's identity: the seed, where a run
#: writes, how it logs, resumes and reports, and display-only keys.
IGNORED_KEYS = (
    "seed", "paths", "hydra", "task_name", "resume", "logger", "legend", "optimized_metric",
    "data.root", "data.download", "trainer.default_root_dir", "trainer.log_every_n_steps",
    "trainer.enable_model_summary", "trainer.enable_progress_bar", "callbacks", "eval.plots",
    "eval.save_norm_weights", "eval.profile", "eval.latency_batch_sizes", "ckpt_path", "tags", "extras",
)  # fmt: skip

ERROR_MAX_CHARS = 200


class MixedDataError(ValueError):
    """The runs come from more than one data set and mixing was not asked for."""


def number(v: Any) -> Optional[float]:
    """A finite number, or None (null, bools, strings, NaN and inf count as missing)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _summarise_error(text: str) -> str:
    """One line of an error text, at most 200 characters (a traceback's last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "FAILED (no error text)"
    line = lines[-1] if lines[0].startswith("Traceback (most recent call last)") else lines[0]
    if len(line) > ERROR_MAX_CHARS:
        line = line[: ERROR_MAX_CHARS - 1] + "…"
    return line


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return None


def _load_json(path: Path) -> tuple[Optional[dict], Optional[str]]:
    if not path.is_file():
        return None, None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"unreadable {path.name}: {exc}"
    if not isinstance(obj, dict):
        return None, f"{path.name} is not a JSON object ({type(obj).__name__})"
    return obj, None


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: leaf value}`` (lists kept as leaves)."""
    if not isinstance(cfg, Mapping):
        return {prefix: cfg} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flat_config(v, key))
        else:
            out[key] = v
    return out


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def identity_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config that defines a row: everything but :data:`IGNORED_KEYS` and the copies of
    the seed that the resolved config holds (``data.seed: ${seed}``: a key named ``seed`` whose
    value is the run's seed)."""
    seed = config.get("seed")
    return {
        k: v for k, v in flat_config(config).items()
        if not _ignored(k) and not (k.rsplit(".", 1)[-1] == "seed" and v == seed)
    }


def group_key(results: Optional[Mapping[str, Any]], config: Optional[Mapping[str, Any]]) -> str:
    """The key of a run's row: equal for runs whose configuration differs by the seed alone.

    ``results["identity"]["config_hash_without_seed"]`` when the run stored it; else a sha256 of
    the resolved config without :data:`IGNORED_KEYS`; else (a run without ``config.yaml``) the
    method, data set and model that ``results.json`` names.
    """
    ident = (results or {}).get("identity")
    if isinstance(ident, Mapping) and isinstance(ident.get("config_hash_without_seed"), str):
        return "id:" + ident["config_hash_without_seed"]
    if isinstance(config, Mapping) and config:
        text = json.dumps(identity_config(config), sort_keys=True, default=str)
        return "cfg:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    res = results or {}
    return "res:" + json.dumps([res.get("method"), res.get("data"), res.get("model")], default=str)


def code_of(results: Optional[Mapping[str, Any]], run_dir: Optional[Path] = None) -> dict[str, Any]:
    """The code a run ran: ``{"source_hash", "git_commit", "git_dirty"}`` from
    ``results["identity"]``, else from the run folder's ``identity.json`` (written when the run
    starts, so failed runs have it too); None values when the run stored no identity."""
    ident = (results or {}).get("identity")
    if not (isinstance(ident, Mapping) and ident.get("source_hash")) and run_dir is not None:
        stored, _ = _load_json(Path(run_dir) / "identity.json")
        ident = stored
    ident = ident if isinstance(ident, Mapping) else {}
    src = ident.get("source_hash")
    commit = ident.get("git_commit")
    dirty = ident.get("git_dirty")
    return {
        "source_hash": src if isinstance(src, str) and src else None,
        "git_commit": commit if isinstance(commit, str) and commit else None,
        "git_dirty": dirty if isinstance(dirty, bool) else None,
    }


def code_label(code: Mapping[str, Any]) -> str:
    """``"1a2b3c4d (git 0f9e8d7, dirty)"``: the source hash (what identifies the code: the content
    of the package's source files) and the git commit it came from; "unknown" without identity."""
    src, commit, dirty = code.get("source_hash"), code.get("git_commit"), code.get("git_dirty")
    if not src and not commit:
        return "unknown"
    git = f"git {commit[:7]}" + (", dirty" if dirty else "") if commit else "no git"
    return f"{src[:8] if src else 'no source hash'} ({git})"


def _hydra_info(run: Path, config: Optional[dict]) -> dict[str, Any]:
    """Method and seed of a run from its config or ``.hydra/`` (for failed / unfinished jobs)."""
    info: dict[str, Any] = {}
    cfg = config if isinstance(config, dict) and config.get("method") else _load_yaml(run / ".hydra" / "config.yaml")
    if isinstance(cfg, dict):
        m = cfg.get("method")
        if isinstance(m, str) and m:
            info["method"] = m
        if isinstance(cfg.get("seed"), int) and not isinstance(cfg.get("seed"), bool):
            info["seed"] = cfg["seed"]
    overrides = _load_yaml(run / ".hydra" / "overrides.yaml")
    if isinstance(overrides, list):
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                continue
            k, v = item.split("=", 1)
            k = k.lstrip("+~")
            if k == "method" and "method" not in info:
                info["method"] = v
            elif k == "seed" and "seed" not in info:
                try:
                    info["seed"] = int(v)
                except ValueError:
                    pass
    return info


def _read_run(run: Path, root: Path) -> dict[str, Any]:
    results, results_error = _load_json(run / RESULTS_NAME)
    config = _load_yaml(run / "config.yaml")
    config = config if isinstance(config, dict) else None
    completed = (run / COMPLETED).is_file()
    error = ""
    if completed and results is not None:
        status = "completed"
    elif (run / FAILED).is_file():
        status = "failed"
        try:
            error = _summarise_error((run / FAILED).read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            error = f"unreadable FAILED marker: {exc}"
    elif completed and results_error:
        status, error = "failed", _summarise_error(results_error)
    elif completed:
        status, error = "unfinished", "COMPLETED marker but no results.json"
    else:
        status = "unfinished"

    info = _hydra_info(run, config)
    res = results or {}
    method = res.get("method") if isinstance(res.get("method"), str) and res.get("method") else info.get("method")
    seed = res.get("seed") if isinstance(res.get("seed"), int) and not isinstance(res.get("seed"), bool) else info.get("seed")
    cfg = config or {}
    data = res.get("data") or (cfg.get("data") or {}).get("name")
    model = res.get("model") or (cfg.get("model") or {}).get("name")
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    code = code_of(results, run)
    return {
        "run_dir": str(run.resolve()),
        "rel": os.path.relpath(run, root),
        "status": status,
        "error": error,
        "method": method or "unknown",
        "seed": seed,
        "data": data,
        "model": model,
        "epochs": epochs,
        "legend": cfg.get("legend"),
        "config": config,
        "group": group_key(results, config),
        "code": code,
        "code_label": code_label(code),
        "results": results if status == "completed" else None,
    }


def collect_runs(*folders: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run folder under ``folders`` (recursively, each folder itself included).

    A run folder holds ``.hydra/``, ``results.json``, ``FAILED`` or ``COMPLETED``; ``checkpoints/``,
    ``wandb/`` and hidden folders are not searched. Each run is a dict: ``run_dir`` (absolute),
    ``rel`` (relative to its folder argument), ``status`` ("completed" | "failed" | "unfinished"),
    ``error`` (one line, "" if none), ``method``, ``seed``, ``data``, ``model``, ``epochs``,
    ``legend``, ``config`` (resolved config.yaml or None), ``group`` (:func:`group_key`), ``code``
    (:func:`code_of`), ``code_label`` (:func:`code_label`) and ``results`` (results.json of a completed run, else None). A folder reached twice counts once.
    Raises FileNotFoundError for a missing folder.
    """
    markers = {RESULTS_NAME, FAILED, COMPLETED}
    runs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"run or sweep folder not found: {root}")
        for dirpath, dirnames, filenames in os.walk(root):
            is_run = ".hydra" in dirnames or not markers.isdisjoint(filenames)
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            real = str(Path(dirpath).resolve())
            if is_run and real not in seen:
                seen.add(real)
                runs.append(_read_run(Path(dirpath), root))
    return runs


#: config keys shown in columns of their own (not repeated in a row's label)
COLUMN_KEYS = ("data.name", "model.name", "trainer.max_epochs")


def _label_parts(groups: list[list[dict[str, Any]]]) -> list[str]:
    """What tells apart groups sharing a method (besides the columns' keys): the config keys that
    differ and, when their code differs, the source hash (``code 1a2b3c4d``)."""
    configs = [{k: v for k, v in identity_config(g[0]["config"] or {}).items() if k not in COLUMN_KEYS} for g in groups]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    codes = [_sources(g) for g in groups]
    parts = [[f"{k}={c.get(k)}" for k in differing] for c in configs]
    if len(set(codes)) > 1:
        for p, src in zip(parts, codes):
            p.append("code " + (", ".join(s[:8] for s in src if s) or "unknown") if any(src) else "code unknown")
    return [", ".join(p) for p in parts]


def _sources(runs: list[dict[str, Any]]) -> tuple[Optional[str], ...]:
    """The distinct source hashes of runs (None: a run that stored none), sorted."""
    return tuple(sorted({r["code"]["source_hash"] for r in runs}, key=lambda s: (s is None, s or "")))


def group_runs(runs: Iterable[dict[str, Any]], method_order: Optional[list[str]] = None,
               split_code: bool = True) -> list[dict[str, Any]]:
    """Rows: runs grouped by :func:`group_key` and, with ``split_code``, by the source hash of their
    code; each ``{"key", "label", "method", "data", "model", "epochs", "legend", "code",
    "mixed_code", "runs"}`` (runs sorted by seed). ``code``: the distinct :func:`code_label` of
    the row's runs; ``mixed_code``: the row pools runs of more than one source (only possible
    with ``split_code=False``, or when some runs stored no identity). Failed and unfinished runs
    join the row of their configuration. Rows sharing a method name get a label naming the config
    keys (and the code) that differ (e.g. ``LN-Finetune [optim.lr=0.001]``, ``LN-Finetune [code
    1a2b3c4d]``). Order: ``method_order`` first, then by data set, method and label."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        key = r["group"] + (f"@{r['code']['source_hash']}" if split_code else "")
        by_key.setdefault(key, []).append(r)
    rows = []
    by_method: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
    for key, g in by_key.items():
        g.sort(key=lambda r: (r["seed"] is None, r["seed"] or 0, r["rel"]))
        by_method.setdefault(g[0]["method"], []).append((key, g))
    for method, same in by_method.items():
        labels = _label_parts([g for _, g in same]) if len(same) > 1 else [""]
        for (key, g), extra in zip(same, labels):
            first = next((r for r in g if r["status"] == "completed"), g[0])
            rows.append({
                "key": key,
                "label": f"{method} [{extra}]" if extra else method,
                "method": method,
                "data": first["data"],
                "model": first["model"],
                "epochs": first["epochs"],
                "legend": first["legend"],
                "code": sorted({r["code_label"] for r in g}),
                "mixed_code": len(_sources(g)) > 1,
                "runs": g,
            })
    rank = {m: i for i, m in enumerate(method_order or [])}
    rows.sort(key=lambda r: (str(r["data"]), rank.get(r["method"], len(rank)), r["method"].lower(), r["label"]))
    return rows


def check_data_sets(rows: list[dict[str, Any]], allow_mixed: bool = False) -> list[str]:
    """The data sets of the rows; raises :class:`MixedDataError` for more than one unless allowed."""
    sets = sorted({str(r["data"]) for r in rows if any(x["status"] == "completed" for x in r["runs"])})
    if len(sets) > 1 and not allow_mixed:
        raise MixedDataError(
            f"the runs come from {len(sets)} data sets ({', '.join(sets)}); give one data set's runs, "
            "or pass --allow-mixed to put them in one table (rows are still per data set)"
        )
    return sets
