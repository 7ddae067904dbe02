"""The fast paths of the norms' ops: hand-fused and compiled implementations of the eager
formulas in :mod:`autonorm.norms` (registered for each op and ``impl`` by :mod:`autonorm.kernels`).

Every norm with an ``impl`` argument (:class:`~autonorm.norms.DyT`, :class:`~autonorm.norms.AutoNorm`,
:class:`~autonorm.norms.AFN`) computes the same function several ways (:mod:`autonorm.norms.impl`):

* ``"eager"``: the readable reference in the norm's module (plain PyTorch ops, autograd records
  every op), e.g. :func:`autonorm.norms.dyt.dynamic_tanh`, :func:`autonorm.norms.autonorm.blend`;
* ``"fused"``: on float32 CPU tensors, single-sweep C++ kernels (:mod:`autonorm.kernels.native`,
  built on first use; one pass over the activations forward and one backward); elsewhere, or
  when they cannot be built, the torch-op kernels of this module (custom
  :class:`torch.autograd.Function`\\ s with analytic backward passes, in-place temporaries, no
  autograd graph inside the norm);
* ``"compiled"``: the eager formula wrapped in :func:`torch.compile`, compiled lazily on the first
  call (:func:`call_compiled`); a compilation failure falls back to eager with a warning;
* ``"auto"`` (the default, :data:`autonorm.norms.impl.DEFAULT_IMPL`): on the first call per op, dtype and shape class,
  the C++ kernels, the torch-op kernels, the eager formula (and, on GPUs, the compiled formula)
  are timed and the fastest is kept, cached per machine (:mod:`autonorm.kernels.select`). Under
  :func:`torch.compile` tracing it is the eager formula (which the compiler fuses).

Low precision: for bfloat16 / float16 computations (the input's dtype promoted with the
parameters') the fused, kernel and auto paths compute in float32 (statistics, sigmoid, sums) and
return the dtype the eager formula returns (the input's for a bfloat16 model; float32 under
autocast with float32 parameters, like LayerNorm under autocast).

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

from ..norms.afn import AFN, affine
from ..norms.autonorm import blend as blend_reference
from ..norms.autonorm import token_mean as _token_mean_torch
from ..norms.autonorm import token_moments as _token_moments_torch
from ..norms.dyt import dynamic_tanh as dyt_reference
from . import native, select
from .native import needs_grad

#: Dtypes whose computations run in float32 on the fused paths.
LOW_PRECISION: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)


def _dtypes(x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype): the output is the eager formula's (``x`` promoted with the
    parameters); low-precision computations run in float32."""
    out = x.dtype
    for p in params:
        out = torch.promote_types(out, p.dtype)
    return (torch.float32 if out in LOW_PRECISION else out), out


def _cast(dtype: torch.dtype, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(dtype) for t in tensors)


def _rowsum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of ``t`` (..., C) over every dimension but the last -> (C,)."""
    return t.reshape(-1, dim).sum(0)


# ----------------------------------------------------------------------------------------- DyT
def dyt_inference(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """DyT without autograd bookkeeping: ``2w * sigmoid(2 alpha x) + (b - w)``, one new tensor.

    Meant for no-grad use (inference); under autograd it still gives correct gradients (every
    in-place op acts on a fresh temporary) but the :class:`DyTFunction` path is cheaper.
    """
    dtype, out = _dtypes(x, alpha, weight, bias)
    s = torch.mul(x.to(dtype), alpha.to(dtype) * 2)
    s.sigmoid_()
    # out= the input: one in-place multiply-add pass over s
    return torch.addcmul(bias.to(dtype) - weight.to(dtype), s, weight.to(dtype) * 2, out=s).to(out)


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


def _dyt_kernel(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    dtype, out = _dtypes(x, alpha, weight, bias)
    return native.dyt(*_cast(dtype, x, alpha, weight, bias)).to(out)


def _dyt_torch(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if not needs_grad(x, alpha, weight, bias):
        return dyt_inference(x, alpha, weight, bias)
    dtype, out = _dtypes(x, alpha, weight, bias)
    return DyTFunction.apply(*_cast(dtype, x, alpha, weight, bias)).to(out)


def dyt_compiled(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return call_compiled(dyt_reference, x, alpha, weight, bias)


#: The routes ``impl="auto"`` chooses among for DyT (all compute :func:`dyt_reference`).
DYT_ROUTES: dict[str, Callable[..., torch.Tensor]] = {
    "kernel": _dyt_kernel, "torch": _dyt_torch, "eager": dyt_reference, "compiled": dyt_compiled,
}  # fmt: skip


def dyt_fused(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Fused DyT on ``x`` (..., C): the C++ kernels (:mod:`~autonorm.kernels.native`) for CPU
    tensors computed in float32 when available, else :class:`DyTFunction` under autograd and
    :func:`dyt_inference` without."""
    if _kernel_ok(x, alpha, weight, bias):
        return _dyt_kernel(x, alpha, weight, bias)
    return _dyt_torch(x, alpha, weight, bias)


def dyt_auto(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """DyT through the route measured fastest for this input (:mod:`~autonorm.kernels.select`)."""
    if torch.compiler.is_compiling():
        return dyt_reference(x, alpha, weight, bias)
    args = (x, alpha, weight, bias)
    name = _choose("dyt", args, _routes(x, _kernel_ok(*args)), DYT_ROUTES)
    return DYT_ROUTES[name](*args)


# ------------------------------------------------------------------------------- AutoNorm blend
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
    dtype, out = _dtypes(x, ln_weight, alpha, dyt_weight)
    x = x.to(dtype)
    a3 = a.to(dtype).view(-1, 1, 1)
    p_row, q_row = _blend_rows(a3, alpha.to(dtype), dyt_weight.to(dtype), dyt_bias.to(dtype))
    ln_out = F.layer_norm(x, (x.shape[-1],), ln_weight.to(dtype), ln_bias.to(dtype), eps)
    y = torch.mul(x, alpha.to(dtype) * 2)
    y.sigmoid_()
    torch.addcmul(q_row, y, p_row, out=y)  # in place: y = P s + Q
    return y.addcmul_(ln_out, a3).to(out)


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
    """Fused AutoNorm blend: the C++ kernels (:mod:`~autonorm.kernels.native`) for CPU tensors
    computed in float32 when available, else :class:`BlendFunction` under autograd and
    :func:`blend_inference` without."""
    args = (x, a, ln_weight, ln_bias, eps, alpha, dyt_weight, dyt_bias)
    if x.dim() == 3 and _kernel_ok(x, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias):
        return _blend_kernel(*args)
    return _blend_torch(*args)


def _blend_kernel(
    x: torch.Tensor, a: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
    alpha: torch.Tensor, dyt_weight: torch.Tensor, dyt_bias: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    dtype, out = _dtypes(x, ln_weight, alpha, dyt_weight)
    x, a, lw, lb, al, dw, db = _cast(dtype, x, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
    return native.blend(x, a, lw, lb, eps, al, dw, db).to(out)


def _blend_torch(
    x: torch.Tensor, a: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
    alpha: torch.Tensor, dyt_weight: torch.Tensor, dyt_bias: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    tensors = (x, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
    if not needs_grad(*tensors):
        return blend_inference(x, a, ln_weight, ln_bias, eps, alpha, dyt_weight, dyt_bias)
    dtype, out = _dtypes(x, ln_weight, alpha, dyt_weight)
    x, a, lw, lb, al, dw, db = _cast(dtype, *tensors)
    return BlendFunction.apply(x.contiguous(), a.contiguous(), lw, lb, al, dw, db, float(eps)).to(out)


def blend_compiled(*args: Any) -> torch.Tensor:
    return call_compiled(blend_reference, *args)


#: The routes ``impl="auto"`` chooses among for the AutoNorm blend (all compute :func:`blend_reference`).
BLEND_ROUTES: dict[str, Callable[..., torch.Tensor]] = {
    "kernel": _blend_kernel, "torch": _blend_torch, "eager": blend_reference, "compiled": blend_compiled,
}  # fmt: skip


def blend_auto(
    x: torch.Tensor,
    a: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    alpha: torch.Tensor,
    dyt_weight: torch.Tensor,
    dyt_bias: torch.Tensor,
) -> torch.Tensor:
    """The AutoNorm blend through the route measured fastest for this input."""
    args = (x, a, ln_weight, ln_bias, eps, alpha, dyt_weight, dyt_bias)
    if torch.compiler.is_compiling():
        return blend_reference(*args)
    kernel = x.dim() == 3 and _kernel_ok(x, a, ln_weight, ln_bias, alpha, dyt_weight, dyt_bias)
    name = _choose("blend", args, _routes(x, kernel), BLEND_ROUTES)
    return BLEND_ROUTES[name](*args)


# ------------------------------------------------------------------- measured choice (auto)
def _kernel_ok(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the C++ kernels can compute this call (CPU tensors computed in float32)."""
    return native.usable_for(_dtypes(x, *params)[0], x, *params) is not None


def _routes(x: torch.Tensor, kernel: bool) -> tuple[str, ...]:
    """The candidate routes: the kernels where they apply, the torch-op kernels, the eager
    formula, and on GPUs the compiled formula (on CPU compiling every norm op costs tens of
    seconds; ``impl="compiled"`` or ``trainer.compile`` force it)."""
    names = ("kernel", "torch", "eager") if kernel else ("torch", "eager")
    return names + ("compiled",) if x.is_cuda else names


def timed_call(fn: Callable[..., Any], args: tuple[Any, ...], train: bool) -> Callable[[], Any]:
    """A callable without arguments that runs ``fn`` on detached copies of ``args``: the forward
    without autograd, or (``train``) forward and backward by :func:`torch.autograd.grad` on the
    copies, so nothing reaches the real inputs' graph or ``.grad``."""
    copies = tuple(
        a.detach().clone().requires_grad_(train and a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args
    )
    leaves = [c for c in copies if isinstance(c, torch.Tensor) and c.requires_grad]
    if not leaves:

        def forward() -> None:
            with torch.no_grad():
                fn(*copies)

        return forward
    grad: list[torch.Tensor] = []

    def step() -> None:
        y = fn(*copies)
        y = y[0] if isinstance(y, tuple) else y
        if not grad:
            grad.append(torch.ones_like(y))
        torch.autograd.grad(y, leaves, grad[0], allow_unused=True)

    return step


def _choose(op: str, args: tuple[Any, ...], names: tuple[str, ...], routes: dict[str, Callable[..., Any]], train: Optional[bool] = None) -> str:
    x = args[0]
    if train is None:
        train = needs_grad(*(a for a in args if isinstance(a, torch.Tensor)))
    return select.choose(op, x, train, names, lambda n: timed_call(routes[n], args, train))


def prefer_kernel(op: str, args: tuple[Any, ...], kernel_fn: Callable[..., Any], torch_fn: Callable[..., Any], train: Optional[bool] = None) -> bool:
    """``impl="auto"`` for an op with one kernel and one torch-op implementation: whether the
    kernel was measured faster for ``args`` (``args[0]`` is the input that sets the key;
    ``train``: time forward and backward, default: whether autograd records the call)."""
    return _choose(op, args, ("kernel", "torch"), {"kernel": kernel_fn, "torch": torch_fn}, train) == "kernel"


# ---------------------------------------------------------------------------- AutoNorm's gate input
def _gate_summary(op: str, kernel_fn: Callable[..., Any], formula: Callable[..., Any], x: torch.Tensor, auto: bool) -> Any:
    """One of the gate-summary ops for ``x`` (B, N, C): the C++ kernel on float32 CPU input (with
    ``auto``: where it was measured faster, forward only whatever the autograd state, so a model
    and its deployed copy choose alike), the formula otherwise."""
    if x.dim() == 3 and native.usable(x) is not None:
        if not auto or prefer_kernel(op, (x,), kernel_fn, formula, train=False):
            return kernel_fn(x)
    return formula(x)


def token_mean_fused(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=1)`` (:func:`autonorm.norms.autonorm.token_mean`) through :func:`_gate_summary`."""
    return _gate_summary("token_mean", native.token_mean, _token_mean_torch, x, auto=False)


def token_mean_auto(x: torch.Tensor) -> torch.Tensor:
    """:func:`token_mean_fused` where the kernel was measured faster, the formula otherwise."""
    return _gate_summary("token_mean", native.token_mean, _token_mean_torch, x, auto=True)


def token_moments_fused(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x.mean(dim=1), x.square().mean(dim=1))`` (:func:`autonorm.norms.autonorm.token_moments`)
    through :func:`_gate_summary`."""
    return _gate_summary("token_moments", native.token_moments, _token_moments_torch, x, auto=False)


def token_moments_auto(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_moments_fused` where the kernels were measured faster, the formula otherwise."""
    return _gate_summary("token_moments", native.token_moments, _token_moments_torch, x, auto=True)


# ------------------------------------------------------------------------------------------ AFN
def afn_batch_fused(
    x: torch.Tensor, weight: torch.Tensor, affine_fn: Callable[..., Any], params: list[torch.Tensor]
) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """AFN's batch-statistics forward through the C++ kernels for ``x`` (M, C) on float32 CPU
    input: ``(y, mean, var)`` (:func:`~autonorm.kernels.native.batch_affine_norm`); None (AFN
    computes its formula) when the kernels do not apply."""
    if native.usable(x, weight) is None:
        return None
    return native.batch_affine_norm(x, affine_fn, params)


def afn_batch_auto(
    x: torch.Tensor, weight: torch.Tensor, affine_fn: Callable[..., Any], params: list[torch.Tensor]
) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`afn_batch_fused` where the kernels were measured faster than the torch ops."""
    if native.usable(x, weight) is None:
        return None
    if not prefer_kernel("afn_stats", (x,), batch_norm_kernel, batch_norm_torch, needs_grad(x, weight)):
        return None
    return native.batch_affine_norm(x, affine_fn, params)


def _standardise(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = torch.rsqrt(var + 1e-5)
    return scale, -mu * scale


def batch_norm_kernel(x: torch.Tensor) -> torch.Tensor:
    """AFN's training sweeps through the kernels with a stand-in affine map (plain
    standardisation): what ``impl="auto"`` times against :func:`batch_norm_torch` (the
    encoder-decoders cost the same on both paths)."""
    return native.batch_affine_norm(x, _standardise, ())[0]


def batch_norm_torch(x: torch.Tensor) -> torch.Tensor:
    """AFN's training sweeps through torch ops (``var_mean``, ``addcmul``), same stand-in map."""
    xf = x.float()
    var, mu = torch.var_mean(xf, dim=0, unbiased=False)
    scale, shift = _standardise(mu, var)
    return torch.addcmul(shift, xf, scale).to(x.dtype)


def afn_affine_fused(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AFN's output ``x * scale + shift``: one C++ kernel sweep on float32 CPU input without
    autograd, the formula (:func:`autonorm.norms.afn.affine`) otherwise."""
    if native.usable(x) is not None and not needs_grad(x, scale, shift):
        return native.affine(x.reshape(-1, x.shape[-1]), scale, shift).view(x.shape)
    return affine(x, scale, shift)


def afn_affine_auto(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """:func:`afn_affine_fused` where the kernel was measured faster, the formula otherwise."""
    if native.usable(x) is not None and not needs_grad(x, scale, shift):
        x2 = x.reshape(-1, x.shape[-1])
        if prefer_kernel("affine", (x2, scale, shift), native.affine, affine):
            return native.affine(x2, scale, shift).view(x.shape)
    return affine(x, scale, shift)


def afn_compiled(module: AFN, x: torch.Tensor) -> torch.Tensor:
    """AFN's eager forward through :func:`call_compiled` (one compiled function for every AFN)."""
    return call_compiled(AFN._forward, module, x)


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
    "BLEND_ROUTES",
    "DYT_ROUTES",
    "LOW_PRECISION",
    "BlendFunction",
    "DyTFunction",
    "afn_affine_auto",
    "afn_affine_fused",
    "afn_batch_auto",
    "afn_batch_fused",
    "afn_compiled",
    "blend_auto",
    "blend_compiled",
    "blend_fused",
    "blend_inference",
    "call_compiled",
    "compile_backend",
    "compile_failures",
    "dyt_auto",
    "dyt_compiled",
    "dyt_fused",
    "dyt_inference",
    "prefer_kernel",
    "set_compile_backend",
    "timed_call",
    "token_mean_auto",
    "token_mean_fused",
    "token_moments_auto",
    "token_moments_fused",
]
