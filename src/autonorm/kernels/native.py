"""Build and load the single-pass C++ CPU kernels in ``csrc/norm_kernels.cpp``.

``impl="fused"`` runs DyT, the AutoNorm blend and AFN's batch statistics through these kernels
when the input is a CPU tensor computed in float32 (bfloat16 / float16 input is converted on the
way in) and the kernels are available; otherwise (GPU, float64, no compiler) it runs the torch-op
versions in :mod:`autonorm.kernels.fused`, which compute the same function. Both are tested
against the eager reference. ``impl="auto"`` (:mod:`autonorm.kernels.select`) uses the kernels
only where they were measured faster than the torch ops.

The kernels are compiled on first use with :func:`torch.utils.cpp_extension.load` (g++ ``-O3
-march=native -fopenmp``, about 15 s, announced on stderr, once per machine) into
``$AUTONORM_KERNEL_DIR`` (default ``~/.cache/autonorm/kernels``), in a folder named by a hash of
the source's content, the torch version, the compiler flags and the CPU's instruction-set flags.
The source is copied into that folder and compiled from there, so the build does not depend on
where the package lies: two checkouts (or an installed copy) of the same source share one build,
and a cache shared between different machines never loads a library built for another CPU.
Concurrent processes wait on the build lock of ``cpp_extension``.

``AUTONORM_NATIVE=0`` turns the kernels off (torch-op path everywhere). A failed build is one
:class:`RuntimeWarning` and the torch-op path for the rest of the process; :func:`status` says
which path is in use and why.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("csrc") / "norm_kernels.cpp"
CFLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math")
LDFLAGS: tuple[str, ...] = ("-fopenmp",)
STALE_LOCK_S = 600.0

_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "ops": None, "error": None, "path": None, "off": 0}


def enabled() -> bool:
    """False when ``AUTONORM_NATIVE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("AUTONORM_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _cpu_signature() -> str:
    """Machine architecture and the CPU's instruction-set flags (Linux), for the cache key."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def build_key() -> str:
    """Hash of the kernel source, torch version, compiler flags and CPU: the build folder's name."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), " ".join(CFLAGS + LDFLAGS).encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def kernel_dir() -> Path:
    """Where builds are cached (``$AUTONORM_KERNEL_DIR`` or ``~/.cache/autonorm/kernels``)."""
    root = os.environ.get("AUTONORM_KERNEL_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "autonorm" / "kernels"


def _build() -> Any:
    # cpp_extension logs "No CUDA runtime is found" on CPU-only machines at import: not our case
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    # the `ninja` of this environment (a dependency) when the environment is not activated
    bindir = str(Path(sys.executable).parent)
    if (Path(bindir) / "ninja").exists() and bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    key = build_key()
    build_dir = kernel_dir() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"autonorm_native_{key}"
    library = build_dir / f"{name}.so"
    if library.exists():
        # built before (by any checkout or environment with this source, torch and CPU): load it
        # without cpp_extension, whose build files name paths of the environment that built it.
        # The build lock (an advisory lock, as cpp_extension takes it) waits out a build in progress.
        try:
            from filelock import FileLock

            with FileLock(str(build_dir / "lock"), timeout=STALE_LOCK_S):
                torch.ops.load_library(str(library))
            _state["path"] = str(library)
            return torch.ops.autonorm_native
        except Exception:  # noqa: BLE001 - an unloadable library or a lock never released: build below
            pass
    source = _source_copy(build_dir)
    if not library.exists():
        print("autonorm: building norm kernels, about 15 s, once", file=sys.stderr, flush=True)
    # cpp_extension waits for its lock file as long as it exists; a build killed midway leaves
    # it behind. A build takes well under a minute, so a lock older than STALE_LOCK_S is stale.
    lock = build_dir / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink()
    except OSError:
        pass
    path = cpp_extension.load(
        name=name,
        sources=[str(source)],
        extra_cflags=list(CFLAGS),
        extra_ldflags=list(LDFLAGS),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    _state["path"] = str(path) if path else str(build_dir)
    return torch.ops.autonorm_native


def _source_copy(build_dir: Path) -> Path:
    """The kernel source inside ``build_dir`` (written atomically when missing or different), so
    the build commands name the same file whichever checkout asks for the build."""
    data = SOURCE.read_bytes()
    dest = build_dir / SOURCE.name
    try:
        if dest.read_bytes() == data:
            return dest
    except OSError:
        pass
    tmp = build_dir / f".{SOURCE.name}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest


def ops() -> Optional[Any]:
    """``torch.ops.autonorm_native`` (building it on the first call), or None when the kernels
    are turned off or could not be built (then a warning was given once)."""
    if _state["tried"]:
        return _state["ops"]
    with _lock:
        if _state["tried"]:
            return _state["ops"]
        if not enabled():
            _state["error"] = "turned off (AUTONORM_NATIVE=0)"
        else:
            try:
                _state["ops"] = _build()
            except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a compile error: fall back
                _state["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                warnings.warn(
                    "autonorm: the C++ norm kernels could not be built "
                    f"({_state['error']}); norm.impl=fused uses the torch-op implementation instead "
                    "(same results, slower on CPU). Set AUTONORM_NATIVE=0 to skip the build.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _state["tried"] = True
        return _state["ops"]


def usable(*tensors: torch.Tensor) -> Optional[Any]:
    """The kernels if every tensor is a float32 CPU tensor and the kernels are available (and
    not inside :func:`turned_off`). Under ``torch.compile`` tracing: None (the torch-op path,
    which the compiler can trace and fuse; the kernels have no fake-tensor implementation)."""
    if _state["off"] or torch.compiler.is_compiling():
        return None
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32:
            return None
    return ops()


def usable_for(dtype: torch.dtype, *tensors: torch.Tensor) -> Optional[Any]:
    """The kernels if the computation runs in float32 (``dtype``) on CPU tensors (of any
    floating dtype, converted by the caller) and the kernels are available; see :func:`usable`."""
    if dtype != torch.float32 or _state["off"] or torch.compiler.is_compiling():
        return None
    for t in tensors:
        if t.device.type != "cpu" or not t.is_floating_point():
            return None
    return ops()


@contextlib.contextmanager
def turned_off() -> Iterator[None]:
    """Inside the block ``impl="fused"`` runs the torch-op path (to compare the two)."""
    _state["off"] += 1
    try:
        yield
    finally:
        _state["off"] -= 1


def status() -> dict[str, Any]:
    """``{"available": bool, "error": str|None, "path": str|None}`` (builds if not tried yet)."""
    lib = ops()
    return {"available": lib is not None, "error": _state["error"], "path": _state["path"]}


# ------------------------------------------------------------------------ autograd Functions
# Each is once-differentiable (no double backward), like the torch-op Functions in fused.py.
class NativeDyTFunction(torch.autograd.Function):
    """DyT ``w tanh(alpha x) + b``: one kernel sweep forward, one backward (saves only ``x``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, alpha, weight)
        return ops().dyt_forward(x, alpha, weight, bias)  # type: ignore[union-attr]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, alpha, weight = ctx.saved_tensors
        dx, dalpha, dw, db = ops().dyt_backward(g, x, alpha, weight)  # type: ignore[union-attr]
        return dx, dalpha.reshape(alpha.shape), dw, db


class NativeBlendFunction(torch.autograd.Function):
    """AutoNorm blend ``a LN(x) + (1 - a) DyT(x)``: one sweep forward (saves ``x`` and the
    per-token mean and rstd), one backward sweep for every gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        a: torch.Tensor,
        ln_weight: torch.Tensor,
        ln_bias: torch.Tensor,
        alpha: torch.Tensor,
        dyt_weight: torch.Tensor,
        dyt_bias: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        y, mean, rstd = ops().blend_forward(x, a, ln_weight, ln_bias, eps, alpha, dyt_weight, dyt_bias, True)  # type: ignore[union-attr]
        ctx.save_for_backward(x, mean, rstd, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, mean, rstd, a, lw, lb, alpha, dw, db = ctx.saved_tensors
        dx, da, dlw, dlb, dalpha, ddw, ddb = ops().blend_backward(g, x, mean, rstd, a, lw, lb, alpha, dw, db)  # type: ignore[union-attr]
        return dx, da.reshape(a.shape), dlw, dlb, dalpha.reshape(alpha.shape), ddw, ddb, None


class TokenMeanFunction(torch.autograd.Function):
    """``x.mean(dim=1)`` for ``x`` (B, N, C). Backward returns ``dh / N`` broadcast over tokens as
    an expanded view (autograd adds it into ``x``'s gradient in one sweep instead of first
    materialising a (B, N, C) tensor, as ``MeanBackward`` does)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.x_shape = x.shape
        return ops().token_mean(x)  # type: ignore[union-attr]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dh: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, n, c = ctx.x_shape
        return (dh / n).unsqueeze(1).expand(b, n, c)


class TokenMomentsFunction(torch.autograd.Function):
    """``(x.mean(dim=1), x.square().mean(dim=1))`` for ``x`` (B, N, C), both moments from one read
    of ``x``; backward ``dx = dm / N + (2 / N) dq x`` in one pass (autograd of the formula writes
    three full-size tensors: the mean's broadcast gradient, the square's, and their sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ctx.save_for_backward(x)
        return ops().token_moments(x)  # type: ignore[union-attr]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dm: torch.Tensor, dq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ops().token_moments_backward(x, dm, dq)  # type: ignore[union-attr]


class BatchAffineNormFunction(torch.autograd.Function):
    """AFN's training forward ``y = x * scale + shift`` for ``x`` (M, C), where ``(scale, shift) =
    affine_fn(mean, var)`` of the batch statistics (AFN's encoder-decoders and lambdas: a small
    graph over (C,) vectors and the module's parameters).

    Forward: the statistics in one sweep, ``affine_fn`` recorded as a small autograd graph of
    its own, ``y`` in one sweep. Backward: ``dscale = sum g x`` and ``dshift = sum g`` in one
    sweep, the small graph's backward (``torch.autograd.grad``) for ``dmean``, ``dvar`` and the
    parameters, then ``dx = g scale + dmean / M + 2 dvar (x - mean) / M`` in one sweep. Eager
    autograd needs about six full-size passes for the same gradients.

    Returns ``(y, mean, var)``; ``mean`` and ``var`` are not differentiable outputs (for the
    running statistics).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, affine_fn: Callable[..., Any], *params: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        lib = ops()
        mean, var = lib.channel_moments(x)  # type: ignore[union-attr]
        with torch.enable_grad():
            mu = mean.detach().requires_grad_(True)
            v = var.detach().requires_grad_(True)
            scale, shift = affine_fn(mu, v)
        y = lib.affine_forward(x, scale.detach(), shift.detach())  # type: ignore[union-attr]
        ctx.save_for_backward(x, mean)
        ctx.inner = (mu, v, scale, shift, params)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor, *_: Any) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, mean = ctx.saved_tensors
        mu, v, scale, shift, params = ctx.inner
        lib = ops()
        dscale, dshift = lib.affine_param_grads(g, x)  # type: ignore[union-attr]
        wanted = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad((scale, shift), (mu, v, *wanted), (dscale, dshift), allow_unused=True)
        dx = None
        if ctx.needs_input_grad[0]:
            m = x.shape[0]
            dmean = grads[0] if grads[0] is not None else torch.zeros_like(mean)
            k1 = grads[1] * (2.0 / m) if grads[1] is not None else torch.zeros_like(mean)
            k0 = dmean / m - k1 * mean
            dx = lib.affine_input_grad(g.contiguous(), x, scale.detach(), k0, k1)  # type: ignore[union-attr]
        rest = iter(grads[2:])
        return (dx, None, *[next(rest) if p.requires_grad else None for p in params])


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op on ``tensors`` (grad mode on and one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def dyt(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """DyT through the kernels (caller checked :func:`usable`)."""
    if needs_grad(x, alpha, weight, bias):
        return NativeDyTFunction.apply(x.contiguous(), alpha, weight, bias)
    return ops().dyt_forward(x, alpha, weight, bias)  # type: ignore[union-attr]


def blend(
    x: torch.Tensor,
    a: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    alpha: torch.Tensor,
    dyt_weight: torch.Tensor,
    dyt_bias: torch.Tensor,
) -> torch.Tensor:
    """``a LN(x) + (1 - a) DyT(x)`` for ``x`` (B, N, C) through the kernels (caller checked
    :func:`usable`)."""
    tensors = (x, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
    if needs_grad(*tensors):
        return NativeBlendFunction.apply(x.contiguous(), a.contiguous(), ln_weight, ln_bias, alpha, dyt_weight, dyt_bias, float(eps))
    y, _, _ = ops().blend_forward(x, a, ln_weight, ln_bias, float(eps), alpha, dyt_weight, dyt_bias, False)  # type: ignore[union-attr]
    return y


def token_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=1)`` for ``x`` (B, N, C) through the kernel, differentiable."""
    if needs_grad(x):
        return TokenMeanFunction.apply(x.contiguous())
    return ops().token_mean(x)  # type: ignore[union-attr]


def token_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x.mean(dim=1), x.square().mean(dim=1))`` for ``x`` (B, N, C) through the kernels,
    differentiable."""
    if needs_grad(x):
        return TokenMomentsFunction.apply(x.contiguous())
    return ops().token_moments(x)  # type: ignore[union-attr]


def batch_affine_norm(
    x: torch.Tensor, affine_fn: Callable[..., Any], params: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AFN's training forward through the kernels: ``(y, mean, var)`` for ``x`` (M, C) with
    ``(scale, shift) = affine_fn(mean, var)`` built from ``params`` (see
    :class:`BatchAffineNormFunction`; without autograd, the same in three calls)."""
    if needs_grad(x, *params):
        return BatchAffineNormFunction.apply(x.contiguous(), affine_fn, *params)
    lib = ops()
    mean, var = lib.channel_moments(x)  # type: ignore[union-attr]
    scale, shift = affine_fn(mean, var)
    return lib.affine_forward(x, scale, shift), mean, var  # type: ignore[union-attr]


def affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` for ``x`` (M, C): one kernel sweep without autograd, ``addcmul``
    (differentiable) when a gradient is needed."""
    if needs_grad(x, scale, shift):
        return torch.addcmul(shift, x, scale)
    return ops().affine_forward(x, scale, shift)  # type: ignore[union-attr]


def _reset_for_tests() -> None:
    """Forget the outcome of the last attempt (the loaded library itself stays loaded)."""
    _state.update(tried=False, ops=None, error=None)


__all__ = [
    "SOURCE",
    "affine",
    "batch_affine_norm",
    "blend",
    "build_key",
    "dyt",
    "enabled",
    "kernel_dir",
    "ops",
    "status",
    "token_mean",
    "token_moments",
    "turned_off",
    "usable",
    "usable_for",
]
