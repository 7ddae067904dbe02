"""A run's identity: which configuration and which code produced it.

A run folder, its checkpoints and its ``results.json`` carry the identity; a run is skipped or
resumed only when the stored identity equals the one of the new command, and the folder name is
derived from it, so one configuration always maps to one folder and no other.

What counts: the resolved config (``OmegaConf.to_container(cfg, resolve=True)``) without the keys
that cannot change a number the run produces:

* where it writes: ``paths.*`` (``paths.data_root`` still counts through ``data.root``, resolved to
  an absolute path), ``trainer.default_root_dir``, ``task_name``, ``hydra``;
* how it reports: ``logger``, ``legend``, ``optimized_metric``, ``trainer.log_every_n_steps``,
  ``trainer.enable_model_summary``, the observing callbacks (progress bar, learning-rate monitor,
  norm-state and gradient-norm logging, time to accuracy), ``eval.plots``, ``eval.save_norm_weights``;
* how it resumes: ``resume`` and how often ``last.ckpt`` is written;
* settings the run does not use (see :func:`unused_settings`): ``gate`` (and the temperature
  callback that reads it) unless ``norm.name`` is ``autonorm``; ``transfer.*`` but ``mode``
  without a transfer; ``distill.*`` but ``mode`` without distillation or the teacher row;
  ``transfer.pretrain`` when ``transfer.pretrained`` is a path; ``data.root`` and
  ``data.download`` for the minis shipped in the package; the ``eval`` settings of a suite that
  is switched off (e.g. ``eval.noise_sigma`` with ``eval.robustness=false``).

Everything else counts, including ``method`` (the table row), ``seed``, ``optim``, ``trainer``,
the test-only callbacks and the robustness settings of ``eval``; a checkpoint given by path
(``transfer.pretrained``, ``distill.teacher.pretrained``) counts by its content too. The source: sha256 of the
package's ``.py``/``.cpp``/``.h`` files and the shipped minis (content, not git state), so an edit to
a norm changes every identity while a commit of the same content does not.

The identity as stored in ``identity.json`` (run folder), ``results.json["identity"]`` and
``checkpoint["autonorm"]["identity"]`` (JSON fields):

* ``name``: the run folder name, ``<method>_<data>_s<seed>-<config_hash[:8]>`` (``[A-Za-z0-9._-]``);
* ``config_hash``: sha256 (16 hex) of the identity config (canonical JSON, sorted keys);
* ``config_hash_without_seed``: the same with the seed left out: equal for the seeds of one row;
* ``source_hash``: sha256 (16 hex) of the source files;
* ``git_commit``: the checkout's HEAD commit, or null outside a git checkout;
* ``git_dirty``: whether the checkout had uncommitted changes (null outside a git checkout);
* ``config`` (``identity.json`` only): the identity config itself, flattened to dotted keys;
* ``source_files`` (``identity.json`` only): ``{relative path: sha256 (12 hex)}`` per source file.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from .io import _json_default, atomic_write_json

__all__ = [
    "IDENTITY_FILE",
    "identity_config",
    "make_identity",
    "public_identity",
    "read_identity",
    "write_identity",
    "differences",
    "describe_differences",
    "safe_name",
    "source_files",
    "source_hash",
    "unused_settings",
]

IDENTITY_FILE = "identity.json"
PACKAGE = Path(__file__).resolve().parents[1]  # src/autonorm
_SOURCE_SUFFIXES = (".py", ".cpp", ".h")
_MINI_DATA = ("mnist_mini", "cifar10_mini")
_PLACEHOLDER = "<output>"

#: Keys (dotted) that never change what a run computes; see the module docstring.
EXCLUDED = (
    "paths", "hydra", "task_name", "resume", "logger", "legend", "optimized_metric",
    "trainer.default_root_dir", "trainer.log_every_n_steps", "trainer.enable_model_summary",
    "callbacks.progress_bar", "callbacks.lr_monitor", "callbacks.norm_state", "callbacks.grad_norms",
    "callbacks.time_to_accuracy", "callbacks.last_checkpoint.every_n_train_steps",
    "eval.plots", "eval.save_norm_weights",
)


# ----------------------------------------------------------------------------- the config part
def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def _plain_unresolved(cfg: DictConfig) -> dict[str, Any]:
    tree = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(tree, dict)
    tree.pop("hydra", None)
    return tree


def _resolved(tree: dict[str, Any], seed: Any = None) -> dict[str, Any]:
    """Resolve ``tree`` with every output path replaced by a placeholder (and the seed by ``seed``)."""
    tree = copy.deepcopy(tree)
    paths = tree.setdefault("paths", {})
    for key in ("output_root", "output_dir", "cache_dir", "log_dir"):
        if key in paths:
            paths[key] = _PLACEHOLDER
    if seed is not None:
        tree["seed"] = seed
    out = OmegaConf.to_container(OmegaConf.create(tree), resolve=True)
    assert isinstance(out, dict)
    return out


def unused_settings(cfg: Mapping[str, Any]) -> list[str]:
    """Dotted keys of settings ``cfg`` (resolved or not) does not use; see the module docstring."""
    unused = []
    norm = (cfg.get("norm") or {}).get("name")
    if norm != "autonorm":
        unused += ["gate", "callbacks.temperature"]
    transfer = cfg.get("transfer") or {}
    if transfer.get("mode", "none") == "none":
        unused += [f"transfer.{k}" for k in transfer if k != "mode"]
    elif str(transfer.get("pretrained", "auto")) != "auto":
        unused.append("transfer.pretrain")
    distill = cfg.get("distill") or {}
    if distill.get("mode", "none") == "none" and cfg.get("reuse_phase") != "teacher":
        unused += [f"distill.{k}" for k in distill if k != "mode"]
    if (cfg.get("data") or {}).get("name") in _MINI_DATA:
        unused += ["data.root", "data.download"]
    ev = cfg.get("eval") or {}
    if not ev.get("robustness", True):
        unused += [f"eval.{k}" for k in ("noise_sigma", "rotation_deg", "eval_seed", "cifar10c", "max_images")]
    if not (ev.get("robustness", True) and ev.get("cifar10c", False)):
        unused += ["eval.cifar10c_dir", "eval.cifar10c_severities"]
    if not ev.get("profile", True):
        unused.append("eval.latency_batch_sizes")
    return unused


def identity_config(cfg: DictConfig, without_seed: bool = False) -> dict[str, Any]:
    """The resolved config that makes a run's identity (a plain nested dict)."""
    tree = _resolved(_plain_unresolved(cfg), seed="*" if without_seed else None)
    for key in (*EXCLUDED, *unused_settings(tree)):
        _drop(tree, key)
    data = tree.get("data") or {}
    if data.get("root") is not None:
        data["root"] = str(Path(str(data["root"])).expanduser().absolute())
    for section in (tree.get("transfer"), (tree.get("distill") or {}).get("teacher")):
        if isinstance(section, dict) and str(section.get("pretrained", "auto")) != "auto":
            section["pretrained_sha256"] = _file_hash(str(section["pretrained"]))
    if not tree.get("method"):
        from autonorm.config import method_name

        try:
            tree["method"] = method_name(OmegaConf.create(tree))
        except Exception:  # an invalid config: validate() names the problem later
            tree["method"] = None
    return tree


def _file_hash(path: str) -> Optional[str]:
    """sha256 (16 hex) of a file's content (a checkpoint given by path), None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _hash(obj: Any, length: int = 16) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


# ----------------------------------------------------------------------------- the source part
@functools.lru_cache(maxsize=1)
def source_files() -> dict[str, str]:
    """``{path relative to the package: sha256 (12 hex)}`` of every source file and shipped mini."""
    files = [p for p in PACKAGE.rglob("*") if p.suffix in _SOURCE_SUFFIXES and "__pycache__" not in p.parts]
    files += sorted((PACKAGE / "data" / "minis").glob("*.npz"))
    return {str(p.relative_to(PACKAGE)): hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in sorted(set(files))}


def source_hash() -> str:
    """sha256 (16 hex) of :func:`source_files`."""
    return _hash(source_files())


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[Optional[str], Optional[bool]]:
    """(HEAD commit, tree dirty) of the checkout holding the package; (None, None) outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


# ------------------------------------------------------------------------------- the identity
def safe_name(text: str, max_len: int = 80) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``, cut to ``max_len``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:max_len].strip("._") or "run"


def make_identity(cfg: DictConfig) -> dict[str, Any]:
    """The identity of the run ``cfg`` describes (see the module docstring for the fields)."""
    config = identity_config(cfg)
    config_hash = _hash(config)
    files = source_files()
    commit, dirty = git_state()
    data = (config.get("data") or {}).get("name", "data")
    name = f"{safe_name(str(config.get('method') or 'run'), 48)}_{safe_name(str(data), 24)}_s{config.get('seed')}-{config_hash[:8]}"
    return {
        "name": name,
        "config_hash": config_hash,
        "config_hash_without_seed": _hash(identity_config(cfg, without_seed=True)),
        "source_hash": source_hash(),
        "git_commit": commit,
        "git_dirty": dirty,
        "config": flatten(config),
        "source_files": files,
    }


def public_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    """The identity without the bulky ``config`` and ``source_files`` (for results and checkpoints)."""
    return {k: v for k, v in identity.items() if k not in ("config", "source_files")}


def write_identity(run_dir: Path, identity: Mapping[str, Any]) -> Path:
    return atomic_write_json(Path(run_dir) / IDENTITY_FILE, dict(identity))


def read_identity(run_dir: Path) -> Optional[dict[str, Any]]:
    """The stored identity, or None when there is none (or it cannot be read)."""
    try:
        obj = json.loads((Path(run_dir) / IDENTITY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, config keys first: ``["optim.lr: 0.005 -> 0.5", ...]``."""
    out = []
    a, b = old.get("config") or {}, new.get("config") or {}
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}")
    if not out and old.get("config_hash") != new.get("config_hash"):
        out.append(f"config hash {old.get('config_hash')} -> {new.get('config_hash')}")
    if old.get("source_hash") != new.get("source_hash"):
        fa, fb = old.get("source_files") or {}, new.get("source_files") or {}
        changed = sorted(f for f in set(fa) | set(fb) if fa.get(f) != fb.get(f))
        what = ", ".join(changed[:3]) + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else "")
        out.append(f"source changed ({what or 'hash ' + str(old.get('source_hash')) + ' -> ' + str(new.get('source_hash'))})")
    return out


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 3) -> str:
    diffs = differences(old, new)
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


# ------------------------------------------------------------------------ Hydra folder names
def run_name_resolver(*, _root_: DictConfig) -> str:
    """``${run_name:}``: the folder name of the run the whole config describes (Hydra run/sweep dirs).

    ``eval.py`` runs (``task_name: eval``) are named after the checkpoint's run folder and file,
    the data option and a hash of the whole resolved evaluation config.
    """
    if _root_.get("task_name") == "eval":
        ckpt = Path(str(_root_.get("ckpt_path") or "none")).expanduser().absolute()
        run = ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.parent.name
        tree = _resolved(_plain_unresolved(_root_))
        tree.pop("paths", None)
        tree["ckpt_path"] = str(ckpt)
        data = (tree.get("data") or {}).get("name", "ckpt-data")
        return f"{safe_name(run, 60)}_{safe_name(ckpt.stem, 16)}_{safe_name(str(data), 24)}-{_hash(tree, 8)}"
    return make_identity(_root_)["name"]


def launch_stamp() -> str:
    """``${launch_stamp:}``: time and a random suffix, one value per launch (shared with child processes)."""
    stamp = os.environ.get("AUTONORM_LAUNCH_STAMP")
    if not stamp:
        import time

        stamp = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{os.urandom(3).hex()}"
        os.environ["AUTONORM_LAUNCH_STAMP"] = stamp
    return stamp


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name_resolver)
    if not OmegaConf.has_resolver("launch_stamp"):
        OmegaConf.register_new_resolver("launch_stamp", launch_stamp)
    if not OmegaConf.has_resolver("safe_name"):
        OmegaConf.register_new_resolver("safe_name", lambda text: safe_name(str(text), 120))


def unused_overrides(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Warnings for command-line overrides of settings the run does not use (:func:`unused_settings`)."""
    unused = unused_settings(OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]
    norm = (cfg.get("norm") or {}).get("name")
    why = {
        "gate": f"only norm=autonorm has a gate (norm={norm})",
        "transfer": "transfer.mode is none",
        "distill": "distill.mode is none",
        "data": "the minis are shipped in the package",
        "eval": "that part of the evaluation is switched off",
        "callbacks": f"only norm=autonorm has a gate (norm={norm})",
    }
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if any(key == u or key.startswith(u + ".") for u in unused):
            out.append(f"{item} is not used by this run ({why.get(key.split('.')[0], 'unused')}); it is left out of the run's identity and folder name")
    return out
