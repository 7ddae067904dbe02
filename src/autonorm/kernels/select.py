"""``impl="auto"``: measure once which implementation of a norm computation is fastest on this
machine, and keep using it.

The implementations it chooses among (the C++ kernels ``kernel``, the torch-op kernels
``torch``, the eager formula ``eager`` and, on GPUs, ``compiled``) compute the same function
(:mod:`autonorm.kernels.fused`; every one is tested against the eager formula, forward and
gradients), so the choice changes speed only, never what is computed beyond float rounding.

On the first call for a *choice key* every candidate is timed with :mod:`torch.utils.benchmark`
(interleaved rounds, median per round, the best round counts) on detached copies of the real
inputs: forward only for inference, forward plus backward (through :func:`torch.autograd.grad`
on the copies, so the model's graph and ``.grad`` are untouched) when autograd records the call.
The key is the op, the device (the GPU's name on CUDA), the dtype, inference or training, the
input shape with every dimension but the last rounded up to a power of two, the channel count,
the torch thread count and the candidate set.

The choices are cached per machine in ``<kernel dir>/auto-<machine>.json`` (beside the kernel
builds, :func:`autonorm.kernels.native.kernel_dir`), where ``<machine>`` hashes the CPU model and
instruction-set flags and the torch version. The file is only a cache: an unreadable or
malformed file is ignored (one warning) and rewritten; it is written atomically (a temporary file
renamed over it, entries of other processes merged in under a lock file held at most
``LOCK_WAIT_S``), so concurrent processes never read a torn file; a choice never waits on another
process for longer than that. Processes that measure the same key at the same time all use the
entry written first, so runs started side by side on one machine take the same paths (and give
bit-identical results where they would without ``auto``).

A measurement taken while other processes kept the CPU busy (on average at least
:data:`autonorm.cpuload.BUSY_OTHER_CORES` cores of ``/proc/stat`` beside this process during the
timing) can crown the wrong candidate, and a cached choice would keep it for good. Every entry
therefore records that load (``"others"``, in cores; None where it cannot be read). An entry
taken on a busy machine, or one without the record, is provisional: the first process that needs
it measures the key once more, and if that measurement ran on a quiet machine it replaces the
entry in the file; otherwise the stored entry stays (so processes running side by side keep
taking the same path). A run keeps the choices it used in its checkpoints
(:class:`autonorm.callbacks.AutoPathsCallback`) and, resumed, goes on with those (:func:`pin`).

Under :func:`torch.compile` tracing nothing is measured: the callers use the eager formula,
which the compiler fuses. A candidate that raises while being measured is dropped.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..cpuload import BUSY_OTHER_CORES, cpu_counters, other_cores

#: Route names, in the order used when nothing can be measured.
ROUTES: tuple[str, ...] = ("kernel", "torch", "eager", "compiled")
#: Seconds of timing per candidate and round, and rounds (interleaved, the opening one rotating).
MEASURE_S = 0.02
ROUNDS = 3
#: Longest wait for another process writing the cache file.
LOCK_WAIT_S = 2.0
SCHEMA = 1

_lock = threading.RLock()
_fast: dict[tuple[Any, ...], str] = {}
_choices: dict[str, dict[str, Any]] = {}
_state: dict[str, Any] = {"loaded": None, "measuring": False}
#: provisional entries this process has measured again (each at most once per process), and pinned ones
_rechecked: set[str] = set()
#: the keys this process has chosen a path for (what a checkpoint keeps, :func:`used_choices`)
_used: set[str] = set()


@functools.lru_cache(maxsize=1)
def _cpu_description() -> str:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[-1].strip()
            if flags and model:
                break
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{flags}"


def machine_key() -> str:
    """Hash of the CPU (model, instruction-set flags) and the torch version: the cache file's name."""
    return hashlib.sha256(f"{_cpu_description()}|{torch.__version__}".encode()).hexdigest()[:16]


def cache_path() -> Path:
    """The JSON file holding this machine's choices."""
    from .native import kernel_dir

    return kernel_dir() / f"auto-{machine_key()}.json"


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


_device_names: dict[str, str] = {}


def _device(dev: torch.device) -> str:
    if dev.type != "cuda":
        return dev.type
    key = str(dev)
    if key not in _device_names:
        try:
            _device_names[key] = f"cuda:{torch.cuda.get_device_name(dev)}"
        except Exception:  # noqa: BLE001 - a name only
            _device_names[key] = "cuda"
    return _device_names[key]


def choice_key(op: str, x: torch.Tensor, train: bool, names: Sequence[str]) -> str:
    """The cache key of one choice (see the module docstring)."""
    shape = [str(_bucket(s)) for s in x.shape[:-1]] + [f"C{x.shape[-1] if x.dim() else 1}"]
    dtype = str(x.dtype).replace("torch.", "")
    mode = "train" if train else "infer"
    return f"{op}|{_device(x.device)}|{dtype}|{mode}|{'x'.join(shape)}|T{torch.get_num_threads()}|{'+'.join(names)}"


# ------------------------------------------------------------------------------------- cache file
def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The choices stored in ``path``; {} (and one warning) when it is unreadable or malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _warn_once(f"cannot read {path} ({exc}); measuring again")
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
        entries = data["choices"]
        if data.get("schema") != SCHEMA or not isinstance(entries, dict):
            raise ValueError("unknown layout")
        return {k: v for k, v in entries.items() if isinstance(v, dict) and v.get("impl") in ROUTES}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        _warn_once(f"ignoring the malformed cache {path} ({type(exc).__name__}); it will be rewritten")
        return {}


def _write(path: Path, entries: dict[str, dict[str, Any]], keep_existing: bool = False) -> dict[str, dict[str, Any]]:
    """Merge ``entries`` into ``path`` and replace it atomically; return the merged entries. With
    ``keep_existing`` an entry already in the file wins over the new one (the first measurement
    of a key written on a machine is the one every process uses). Writers take turns on a lock
    file for at most ``LOCK_WAIT_S`` (then write anyway: the worst case is an entry lost,
    measured again later). A failure only warns."""
    from filelock import FileLock, Timeout

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=LOCK_WAIT_S)
        try:
            lock.acquire()
        except Timeout:
            pass
        try:
            stored = _read(path)
            merged = {**entries, **stored} if keep_existing else {**stored, **entries}
            if merged != stored:
                _replace(path, merged)
            return merged
        finally:
            if lock.is_locked:
                lock.release()
    except OSError as exc:
        _warn_once(f"cannot write {path} ({exc}); the choice holds for this process only")
        return dict(entries)


def _replace(path: Path, merged: dict[str, dict[str, Any]]) -> None:
    body = {"schema": SCHEMA, "machine": _cpu_description().split("|", 2)[1], "torch": torch.__version__, "choices": merged}
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(f"autonorm impl=auto: {msg}", RuntimeWarning, stacklevel=4)


def _load() -> None:
    path = cache_path()
    if _state["loaded"] != path:
        _choices.clear()
        _fast.clear()
        _choices.update(_read(path))
        _state["loaded"] = path


# ------------------------------------------------------------------------------------ measuring
def provisional(entry: dict[str, Any]) -> bool:
    """Whether a cached choice was measured on a busy machine, or without a record of the load."""
    if "others" not in entry:
        return True
    others = entry["others"]
    return isinstance(others, (int, float)) and others >= BUSY_OTHER_CORES


def _entry(name: str, micros: dict[str, float], others: Optional[float]) -> dict[str, Any]:
    return {"impl": name, "us": {k: round(v, 2) for k, v in micros.items()}, "others": None if others is None else round(others, 2)}


def _measure(names: Sequence[str], make: Callable[[str], Callable[[], Any]]) -> tuple[Optional[str], dict[str, float], Optional[float]]:
    """Time every candidate; (the fastest, {name: best round median in microseconds}, the cores
    other processes used on average during the timing, None where unknown)."""
    from torch.utils import benchmark

    fns: dict[str, Callable[[], Any]] = {}
    for name in names:
        try:
            fn = make(name)
            fn()  # warm-up (and compilation, for the compiled route)
            fns[name] = fn
        except Exception:  # noqa: BLE001 - a candidate that cannot run is not a candidate
            continue
    if len(fns) < 2:
        return (next(iter(fns)) if fns else None), {}, None
    times: dict[str, list[float]] = {n: [] for n in fns}
    order = list(fns)
    threads = torch.get_num_threads()
    before = cpu_counters()
    for r in range(ROUNDS):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            timer = benchmark.Timer(stmt="f()", globals={"f": fns[name]}, num_threads=threads)
            times[name].append(timer.blocked_autorange(min_run_time=MEASURE_S).median)
    others = other_cores(before, cpu_counters())
    best = {n: min(t) * 1e6 for n, t in times.items()}
    return min(best, key=best.__getitem__), best, others


def choose(op: str, x: torch.Tensor, train: bool, names: Sequence[str], make: Callable[[str], Callable[[], Any]]) -> str:
    """The fastest of ``names`` for ``op`` on input ``x``.

    ``make(name)`` returns a callable without arguments that runs candidate ``name`` once on
    copies of the inputs (called only when the key is not known yet). ``train``: whether the
    call is recorded by autograd (then ``make``'s callables run forward and backward).
    """
    names = tuple(names)
    fast_key = (op, x.device, x.dtype, train, tuple(x.shape), torch.get_num_threads(), names)
    hit = _fast.get(fast_key)
    if hit is not None:
        return hit
    if len(names) == 1:
        return names[0]
    with _lock:
        if _state["measuring"]:  # a candidate calling back into a choice: no nested timing
            return names[0]
        _load()
        key = choice_key(op, x, train, names)
        if key not in _choices:  # written by another process since this one read the file?
            _choices.update({k: v for k, v in _read(cache_path()).items() if k not in _choices})
        entry = _choices.get(key)
        name = entry.get("impl") if entry else None
        recheck = name in names and provisional(entry) and key not in _rechecked  # type: ignore[arg-type]
        if name not in names or recheck:
            _state["measuring"] = True
            try:
                new_name, micros, others = _measure(names, make)
            finally:
                _state["measuring"] = False
            _rechecked.add(key)
            if new_name is None:
                return name if name in names else names[0]
            new = _entry(new_name, micros, others)
            if recheck and provisional(new):
                pass  # busy now too: the stored entry stays, as the other processes use it
            elif recheck:  # a quiet measurement replaces the provisional one
                entry = _write(cache_path(), {key: new}).get(key, new)
            else:  # another process may have measured this key meanwhile: its entry, written first, wins
                entry = _write(cache_path(), {key: new}, keep_existing=True).get(key, new)
            if entry is None or entry.get("impl") not in names:
                entry = new
            _choices[key] = entry
            name = entry["impl"]
        _used.add(key)
        if len(_fast) > 4096:
            _fast.clear()
        _fast[fast_key] = name
        return name


def choices() -> dict[str, dict[str, Any]]:
    """``{choice key: {"impl": route, "us": {route: microseconds}, "others": cores}}`` known to this process."""
    with _lock:
        return {k: dict(v) for k, v in _choices.items()}


def used_choices() -> dict[str, dict[str, Any]]:
    """The entries of the choices this process has made (a subset of :func:`choices`)."""
    with _lock:
        return {k: dict(_choices[k]) for k in sorted(_used) if k in _choices}


def pin(entries: dict[str, dict[str, Any]]) -> int:
    """Use ``entries`` (from :func:`used_choices`, e.g. kept in a checkpoint) for their keys in
    this process, whatever the cache file holds now, and never measure those keys again here: a
    resumed run goes on with the paths it started with, so it ends with the same bits as a run
    never interrupted even when the file changed in between (a provisional entry replaced, the
    file deleted). Entries naming an unknown route are ignored. Returns how many were pinned."""
    with _lock:
        _load()
        n = 0
        for key, entry in entries.items():
            if isinstance(entry, dict) and entry.get("impl") in ROUTES:
                _choices[key] = dict(entry)
                _rechecked.add(key)
                n += 1
        _fast.clear()
        return n


def forget() -> None:
    """Forget the choices held in memory (the file is read again on the next choice)."""
    with _lock:
        _fast.clear()
        _choices.clear()
        _rechecked.clear()
        _used.clear()
        _state["loaded"] = None


__all__ = ["ROUTES", "cache_path", "choice_key", "choices", "choose", "forget", "machine_key", "pin", "provisional", "used_choices"]
