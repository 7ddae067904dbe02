"""Alternative implementations of the DyT and AutoNorm computations: hand-fused and compiled.

Every norm with an ``impl`` argument (:class:`~autonorm.norms.DyT`, :class:`~autonorm.norms.AutoNorm`,
:class:`~autonorm.norms.AFN`) computes the same function three ways:

* ``"eager"``: the readable reference (plain PyTorch ops, autograd records every op);
* ``"fused"``: on float32 CPU tensors, single-sweep C++ kernels (:mod:`autonorm.norms.native`,
  built on first use; one pass over the activations forward and one backward); elsewhere, or
  when they cannot be built, the torch-op kernels of this module (custom
  :class:`torch.autograd.Function`\\ s with analytic backward passes, in-place temporaries, no
  autograd graph inside the norm);
* ``"compiled"``: the eager formula wrapped in :func:`torch.compile`, compiled lazily on the first
  call (:func:`call_compiled`); a compilation failure falls back to eager with a warning.

The tanh identity
-----------------
Both fused kernels evaluate Dynamic Tanh (Zhu et al., 2025, "Transformers without Normalization")
through the exact identity ``tanh(z) = 2 * sigmoid(2 z) - 1``::

    DyT(x) = w * tanh(alpha * x) + b = (2 w) * s + (b - w),     s = sigmoid(2 alpha x)

because ``torch.tanh`` on CPU is about ten times slower than ``torch.sigmoid`` in the PyTorch
builds used here (vectorised tanh vs. sigmoid kernels), while the identity costs one multiply.
The two forms agree to float rounding (max abs difference ~2e-7 for float32 inputs of unit
scale; for |z| < ~1e-7 the identity returns a value within ~1e-7 of tanh(z) rather than the
correctly rounded tiny number). Derivatives in terms of ``s``::

    d tanh(z)/dz = 1 - tanh(z)^2 = 4 s (1 - s)
    dDyT/dx      = 2 w * s (1 - s) * 2 alpha          (sigmoid_backward, one kernel)
    dDyT/dalpha  = 2 w * s (1 - s) * 2 x
    dDyT/dw      = 2 s - 1                            dDyT/db = 1

The AutoNorm blend ``y = a LN(x) + (1 - a) DyT(x)`` (``a`` (B,) per sample) is computed with
per-sample coefficient rows ``P = (1 - a) 2 w_dyt`` and ``Q = (1 - a)(b_dyt - w_dyt)`` (B, 1, C)::

    y = a * LN(x) + P * s + Q

and its backward uses :func:`torch.ops.aten.native_layer_norm_backward` with the gradient
``a * g`` (which also returns the LN affine gradients), ``sigmoid_backward`` for the DyT branch,
and per-sample reductions for ``da``::

    da_b = <g_b, LN(x)_b> - sum_c [2 w_dyt,c GS_bc + (b_dyt - w_dyt)_c G_bc]
    G_bc = sum_n g_bnc        GS_bc = sum_n g_bnc s_bnc

Both Functions are once-differentiable (no double backward), save ``x``, ``s`` (and ``LN(x)``,
mean, rstd for the blend), and when no gradient is needed the forward runs without saving
anything, writing its temporaries in place.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import native
from .native import needs_grad

IMPLS: tuple[str, ...] = ("eager", "compiled", "fused")


def check_impl(impl: str) -> str:
    """Validate an ``impl`` name (``eager``, ``compiled`` or ``fused``) and return it."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got impl={impl!r}")
    return impl


def _compute_dtype(x: torch.Tensor, *params: torch.Tensor) -> torch.dtype:
    dtype = x.dtype
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _rowsum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``t`` (..., C) over every dimension but the last -> (C,)."""
    return t.reshape(-1, dim).sum(0)


# ----------------------------------------------------------------------------------------- DyT
def dyt_reference(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The eager DyT formula ``weight * tanh(alpha * x) + bias`` (what ``compiled`` compiles)."""
    return weight * torch.tanh(alpha * x) + bias


def dyt_inference(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """DyT without autograd bookkeeping: ``2w * sigmoid(2 alpha x) + (b - w)``, one new tensor.

    Meant for no-grad use (inference); under autograd it still gives correct gradients (every
    in-place op acts on a fresh temporary) but the :class:`DyTFunction` path is cheaper.
    """
    dtype = _compute_dtype(x, alpha, weight, bias)
    s = torch.mul(x.to(dtype), alpha.to(dtype) * 2)
    s.sigmoid_()
    # out= the input: one in-place multiply-add pass over s
    return torch.addcmul(bias.to(dtype) - weight.to(dtype), s, weight.to(dtype) * 2, out=s)


class DyTFunction(torch.autograd.Function):
    """Fused DyT: ``y = w tanh(alpha x) + b`` via ``s = sigmoid(2 alpha x)`` (see module doc)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        s = torch.mul(x, alpha * 2).sigmoid_()
        y = torch.addcmul(bias - weight, s, weight * 2)
        ctx.save_for_backward(x, s, alpha, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, s, alpha, weight = ctx.saved_tensors
        need_x, need_alpha, need_w, need_b = ctx.needs_input_grad[:4]
        dim = weight.numel()
        dx = dalpha = dw = db = None
        g = g.contiguous()
        if need_w or need_b:
            g_sum = _rowsum(g, dim)
            if need_b:
                db = g_sum
            if need_w:
                dw = _rowsum(g * s, dim).mul_(2).sub_(g_sum)  # sum g (2s - 1)
        if need_x or need_alpha:
            # u = dL/dz with z = 2 alpha x: g * 2w * s (1 - s), written into the g * 2w temporary.
            u = g * (weight * 2)
            torch.ops.aten.sigmoid_backward.grad_input(u, s, grad_input=u)
            if need_alpha:
                dalpha = (torch.dot(u.reshape(-1), x.reshape(-1)) * 2).reshape(alpha.shape)
            if need_x:
                dx = u.mul_(alpha * 2)
        return dx, dalpha, dw, db


def dyt_fused(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fused DyT on ``x`` (..., C): the C++ kernels (:mod:`~autonorm.norms.native`) for float32 CPU
    tensors when available, else :class:`DyTFunction` under autograd and :func:`dyt_inference`
    without."""
    if native.usable(x, alpha, weight, bias) is not None:
        return native.dyt(x, alpha, weight, bias)
    if not needs_grad(x, alpha, weight, bias):
        return dyt_inference(x, alpha, weight, bias)
    dtype = _compute_dtype(x, alpha, weight, bias)
    return DyTFunction.apply(x.to(dtype), alpha.to(dtype), weight.to(dtype), bias.to(dtype))


# ------------------------------------------------------------------------------- AutoNorm blend
def blend_reference(
    x: torch.Tensor,
    a: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    alpha: torch.Tensor,
    dyt_weight: torch.Tensor,
    dyt_bias: torch.Tensor,
) -> torch.Tensor:
    """The eager AutoNorm blend ``lerp(DyT(x), LN(x), a)`` (what ``compiled`` compiles)."""
    ln_out = F.layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
    dyt_out = dyt_weight * torch.tanh(alpha * x) + dyt_bias
    dtype = torch.promote_types(ln_out.dtype, dyt_out.dtype)
    return torch.lerp(dyt_out.to(dtype), ln_out.to(dtype), a.to(dtype).view(-1, 1, 1))


def _blend_rows(a3: torch.Tensor, alpha: torch.Tensor, dyt_weight: torch.Tensor, dyt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample rows ``P = (1-a) 2 w`` and ``Q = (1-a)(b - w)`` of shape (B, 1, C)."""
    one_minus = 1 - a3
    return one_minus * (dyt_weight * 2), one_minus * (dyt_bias - dyt_weight)


def blend_inference(
    x: torch.Tensor,
    a: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    alpha: torch.Tensor,
    dyt_weight: torch.Tensor,
    dyt_bias: torch.Tensor,
) -> torch.Tensor:
    """``a LN(x) + (1-a) DyT(x)`` for ``x`` (B, N, C), ``a`` (B,), without autograd bookkeeping.

    Two full-size tensors are allocated (the LayerNorm output and the result); everything else
    happens in place.
    """
    dtype = _compute_dtype(x, ln_weight, alpha, dyt_weight)
    x = x.to(dtype)
    a3 = a.to(dtype).view(-1, 1, 1)
    p_row, q_row = _blend_rows(a3, alpha.to(dtype), dyt_weight.to(dtype), dyt_bias.to(dtype))
    ln_out = F.layer_norm(x, (x.shape[-1],), ln_weight.to(dtype), ln_bias.to(dtype), eps)
    y = torch.mul(x, alpha.to(dtype) * 2)
    y.sigmoid_()
    torch.addcmul(q_row, y, p_row, out=y)  # in place: y = P s + Q
    return y.addcmul_(ln_out, a3)


class BlendFunction(torch.autograd.Function):
    """Fused AutoNorm blend ``a LN(x) + (1 - a) DyT(x)`` with an analytic backward (module doc)."""

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
        dim = x.shape[-1]
        a3 = a.view(-1, 1, 1)
        ln_out, mean, rstd = torch.native_layer_norm(x, (dim,), ln_weight, ln_bias, eps)
        s = torch.mul(x, alpha * 2).sigmoid_()
        p_row, q_row = _blend_rows(a3, alpha, dyt_weight, dyt_bias)
        y = torch.addcmul(q_row, s, p_row).addcmul_(ln_out, a3)
        ctx.save_for_backward(x, s, ln_out, mean, rstd, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        x, s, ln_out, mean, rstd, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias = ctx.saved_tensors
        need_x, need_a, need_lw, need_lb, need_alpha, need_dw, need_db = ctx.needs_input_grad[:7]
        b, dim = x.shape[0], x.shape[-1]
        g = g.contiguous()
        a3 = a.view(-1, 1, 1)
        one_minus = (1 - a).unsqueeze(-1)  # (B, 1)
        dx = da = dlw = dlb = dalpha = ddw = ddb = None

        # LayerNorm branch: gradient a * g into aten's fused LN backward (dx, dw, db at once).
        if need_x or need_lw or need_lb:
            dx, dlw, dlb = torch.ops.aten.native_layer_norm_backward(
                g * a3, x, (dim,), mean, rstd, ln_weight, ln_bias, [need_x, need_lw, need_lb]
            )
        # DyT branch: gradient at z = 2 alpha x is g * P * s (1 - s).
        if need_x or need_alpha:
            p_row = one_minus.unsqueeze(1) * (dyt_weight * 2)
            u = g * p_row
            torch.ops.aten.sigmoid_backward.grad_input(u, s, grad_input=u)
            if need_alpha:
                dalpha = (torch.dot(u.reshape(-1), x.reshape(-1)) * 2).reshape(alpha.shape)
            if need_x:
                dx = u.mul_(alpha * 2) if dx is None else dx.addcmul_(u, alpha * 2)
        # Per-sample channel sums for da and the DyT affine.
        if need_a or need_dw or need_db:
            g_bc = g.sum(1)  # (B, C)
            if need_a or need_dw:
                gs_bc = (g * s).sum(1)
            if need_a:
                ln_term = torch.linalg.vecdot(g.reshape(b, -1), ln_out.reshape(b, -1))  # (B,)
                dyt_term = gs_bc @ (dyt_weight * 2) + g_bc @ (dyt_bias - dyt_weight)
                da = (ln_term - dyt_term).reshape(a.shape)
            if need_dw:
                ddw = (one_minus * (gs_bc * 2 - g_bc)).sum(0)
            if need_db:
                ddb = (one_minus * g_bc).sum(0)
        return dx, da, dlw, dlb, dalpha, ddw, ddb, None


def blend_fused(
    x: torch.Tensor,
    a: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    alpha: torch.Tensor,
    dyt_weight: torch.Tensor,
    dyt_bias: torch.Tensor,
) -> torch.Tensor:
    """Fused AutoNorm blend: the C++ kernels (:mod:`~autonorm.norms.native`) for float32 CPU
    tensors when available, else :class:`BlendFunction` under autograd and
    :func:`blend_inference` without."""
    tensors = (x, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
    if x.dim() == 3 and native.usable(*tensors) is not None:
        return native.blend(x, a, ln_weight, ln_bias, eps, alpha, dyt_weight, dyt_bias)
    if not needs_grad(*tensors):
        return blend_inference(x, a, ln_weight, ln_bias, eps, alpha, dyt_weight, dyt_bias)
    dtype = _compute_dtype(x, ln_weight, alpha, dyt_weight)
    x, a, lw, lb, al, dw, db = (t.to(dtype) for t in tensors)
    return BlendFunction.apply(x.contiguous(), a.contiguous(), lw, lb, al, dw, db, float(eps))


# ------------------------------------------------------------------------------ torch.compile
#: Backend for ``impl="compiled"``; the environment variable ``AUTONORM_COMPILE_BACKEND`` overrides
#: the default (e.g. ``aot_eager`` where no C++ compiler is available).
_compile_backend: str = os.environ.get("AUTONORM_COMPILE_BACKEND", "inductor")
_compiled: dict[str, Callable[..., torch.Tensor]] = {}
_broken: dict[str, str] = {}


def set_compile_backend(backend: str) -> None:
    """Use ``backend`` for every later ``impl="compiled"`` call; clears compiled functions and
    the record of earlier compilation failures."""
    global _compile_backend
    _compile_backend = str(backend)
    _compiled.clear()
    _broken.clear()


def compile_backend() -> str:
    """The backend ``impl="compiled"`` uses."""
    return _compile_backend


def compile_failures() -> dict[str, str]:
    """``{function name: error}`` for every function whose compilation failed (then run eager)."""
    return dict(_broken)


def call_compiled(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Call ``torch.compile(fn)`` (created on the first call, shared by every module, so modules
    hold no compiled object and pickle / deepcopy / ``state_dict`` as usual).

    If compiling or running the compiled function raises, ``fn`` is used from then on (this
    process), after one :class:`RuntimeWarning`. Errors raised later, inside the backward of a
    compiled graph, cannot be caught here.
    """
    name = getattr(fn, "__qualname__", repr(fn))
    if name in _broken:
        return fn(*args)
    try:
        cfn = _compiled.get(name)
        if cfn is None:
            cfn = _compiled[name] = torch.compile(fn, backend=_compile_backend, dynamic=None)
        return cfn(*args)
    except Exception as exc:  # noqa: BLE001 - any compiler error: fall back to eager
        _broken[name] = f"{type(exc).__name__}: {exc}"
        _compiled.pop(name, None)
        warnings.warn(
            f"torch.compile of {name} failed with backend {_compile_backend!r} ({type(exc).__name__}: {exc}); "
            "falling back to the eager implementation",
            RuntimeWarning,
            stacklevel=2,
        )
        return fn(*args)


__all__ = [
    "IMPLS",
    "BlendFunction",
    "DyTFunction",
    "blend_fused",
    "blend_inference",
    "blend_reference",
    "call_compiled",
    "check_impl",
    "compile_backend",
    "compile_failures",
    "dyt_fused",
    "dyt_inference",
    "dyt_reference",
    "set_compile_backend",
]
