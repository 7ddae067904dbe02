"""Model cost: parameters, FLOPs (fvcore with extra op handles) and latency.

FLOP convention (documented once, used everywhere)
--------------------------------------------------
fvcore counts **one fused multiply-add as one FLOP** for matrix products (linear, matmul, bmm,
conv, einsum) and ``5 * numel`` for an affine ``layer_norm`` (4 without affine). fvcore has no
handle for, or ignores, many ops that matter when the norms differ (``tanh`` in DyT, the gate's
``sigmoid``, ``lerp``/``mul``/``add`` of the blend, ``mean``/``var`` of statistics) and for the
fused attention ``aten::scaled_dot_product_attention``. This module registers:

* matrix-product-like, one FLOP per multiply-add:
  ``scaled_dot_product_attention`` with q (..., L, E), k (..., S, E), v (..., S, Ev):
  ``batch * L * S * (E + Ev)`` for QK^T and AV, plus ``4 * batch * L * S`` for the scaling (1)
  and the softmax (3) of the score matrix (same per-element costs as below);
* element-wise ops, **one FLOP per output element**: add, sub, rsub, mul, div, neg, abs, exp,
  log, sqrt, rsqrt, pow, reciprocal, tanh, sigmoid, gelu, silu, relu, softplus, erf, maximum,
  minimum (and in-place variants); ``addcmul``/``addcdiv``: 2 per element; ``lerp``: 3 per
  element (sub, mul, add);
* reductions, per **input** element: ``mean``/``sum``: 1; ``var``/``std`` (and ``var_mean`` /
  ``std_mean``): 3 (mean, subtract, square-accumulate); ``softmax`` / ``log_softmax``: 3
  (exp, accumulate, divide);
* ``layer_norm`` / ``native_layer_norm``: fvcore's ``5 * numel`` (affine) / ``4 * numel``.

Data movement (view, reshape, cat, indexing, comparisons, clamp) counts 0, as in fvcore. The
``norm`` cost is fvcore's ``by_module`` total over the model's ``norm_points()`` (every injected
norm module, gates included), so ``total - norm`` is the same for every norm choice.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from math import prod
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["FLOP_CONVENTION", "count_flops", "count_params", "measure_latency", "profile_model"]

FLOP_CONVENTION = (
    "fvcore: 1 FLOP per multiply-add for matrix products (incl. scaled_dot_product_attention "
    "QK^T and AV); element-wise ops 1 per output element (addcmul/addcdiv 2, lerp 3); mean/sum 1 "
    "and var/std 3 per input element; softmax 3 per element (+1 attention scaling); layer_norm "
    "5 per element (affine); per sample (batch of 1)."
)


def _shape(val: Any) -> Optional[list[int]]:
    try:
        if val.isCompleteTensor():
            return list(val.type().sizes())
    except Exception:  # noqa: BLE001 - non-tensor jit values
        return None
    return None


def _numel(val: Any) -> int:
    shape = _shape(val)
    return int(prod(shape)) if shape is not None else 0


def _per_output(scale: float):
    def handle(inputs: list, outputs: list) -> int:
        return int(scale * _numel(outputs[0])) if outputs else 0

    return handle


def _per_input(scale: float):
    def handle(inputs: list, outputs: list) -> int:
        return int(scale * _numel(inputs[0])) if inputs else 0

    return handle


def _sdpa_flop(inputs: list, outputs: list) -> int:
    """QK^T and AV (multiply-adds) + scaling and softmax of the (L, S) scores per batch-head."""
    q, k, v = (_shape(t) for t in inputs[:3])
    if q is None or k is None or v is None:
        return 0
    batch = int(prod(q[:-2]))
    length, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    scores = batch * length * s
    return int(scores * (e + ev) + 4 * scores)


_ELEMENTWISE_1 = [
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow",
    "reciprocal", "tanh", "sigmoid", "gelu", "silu", "relu", "softplus", "erf", "maximum",
    "minimum", "square",
]  # fmt: skip


def _extra_handles() -> dict[str, Any]:
    """Op name -> fvcore handle for everything the defaults miss (see module docstring)."""
    from fvcore.nn.jit_handles import norm_flop_counter

    handles: dict[str, Any] = {}
    for op in _ELEMENTWISE_1:
        handles[f"aten::{op}"] = _per_output(1)
        handles[f"aten::{op}_"] = _per_output(1)
    for op, scale in (("addcmul", 2), ("addcdiv", 2), ("lerp", 3)):
        handles[f"aten::{op}"] = _per_output(scale)
        handles[f"aten::{op}_"] = _per_output(scale)
    for op, scale in (
        ("mean", 1), ("sum", 1), ("var", 3), ("std", 3), ("var_mean", 3), ("std_mean", 3),
        ("softmax", 3), ("_softmax", 3), ("log_softmax", 3), ("_log_softmax", 3),
    ):  # fmt: skip
        handles[f"aten::{op}"] = _per_input(scale)
    handles["aten::scaled_dot_product_attention"] = _sdpa_flop
    handles["aten::layer_norm"] = norm_flop_counter(2)
    handles["aten::native_layer_norm"] = norm_flop_counter(2)
    return handles


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _norm_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "norm_points"):
        return list(model.norm_points())
    return []


def count_flops(model: nn.Module, img_size: int = 32, in_chans: int = 3) -> dict:
    """FLOPs per sample of ``model`` (traced on one zero image, eval mode) with fvcore.

    Returns a JSON-serialisable dict::

        {"total": int, "norm": int, "non_norm": int, "norm_fraction": float,
         "by_norm_point": {name: int}, "by_operator": {op: int},
         "unsupported_ops": {op: count}, "convention": str}

    ``norm`` sums ``by_module`` over ``model.norm_points()`` (0 if the model has none).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import touches deprecated torch.jit APIs
        from fvcore.nn import FlopCountAnalysis

    device = _model_device(model)
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    was_training = model.training
    model.eval()
    fvcore_logger = logging.getLogger("fvcore")
    old_level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)
    # Count the model's FLOPs, not those of an implementation: trace the eager norm formulas (the
    # C++ kernels are opaque to the tracer, the sigmoid identity of impl=fused counts differently)
    # and the fused attention op (one handle, whichever attention path runs).
    switched = [(m, "impl", "eager") for m in model.modules() if isinstance(getattr(m, "impl", None), str)]
    switched += [(m, "attention", "sdpa") for m in model.modules() if hasattr(m, "attention") and hasattr(m, "explicit")]
    saved = [getattr(m, attr) for m, attr, _ in switched]
    try:
        for m, attr, value in switched:
            setattr(m, attr, value)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fa = FlopCountAnalysis(model, x)
            fa.set_op_handle(**_extra_handles())
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            fa.tracer_warnings("none")
            total = int(fa.total())
            by_module = fa.by_module()
            by_operator = {str(k): int(v) for k, v in fa.by_operator().items()}
            unsupported = {str(k): int(v) for k, v in fa.unsupported_ops().items()}
    finally:
        fvcore_logger.setLevel(old_level)
        model.train(was_training)
        for (m, attr, _), value in zip(switched, saved):
            setattr(m, attr, value)
    by_norm = {name: int(by_module.get(name, 0)) for name, _ in _norm_points(model)}
    norm = int(sum(by_norm.values()))
    return {
        "total": total,
        "norm": norm,
        "non_norm": total - norm,
        "norm_fraction": float(norm / total) if total else 0.0,
        "by_norm_point": by_norm,
        "by_operator": by_operator,
        "unsupported_ops": unsupported,
        "convention": FLOP_CONVENTION,
    }


def count_params(model: nn.Module) -> dict[str, int]:
    """``{"total": all parameters, "trainable": those with requires_grad}`` (shared counted once)."""
    params = list(model.parameters())  # nn.Module.parameters() already de-duplicates
    return {
        "total": int(sum(p.numel() for p in params)),
        "trainable": int(sum(p.numel() for p in params if p.requires_grad)),
    }


def measure_latency(
    model: nn.Module,
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 5,
    iters: int = 20,
    device: Optional[Union[str, torch.device]] = None,
    img_size: int = 32,
    in_chans: int = 3,
    num_threads: Optional[int] = None,
) -> dict:
    """Median forward time per sample, in eval mode under ``torch.inference_mode``.

    Each of ``iters`` timed forwards (after ``warmup`` untimed ones) is timed on its own with
    ``time.perf_counter``; on CUDA the device is synchronised before starting and before reading
    the clock. The model is moved to ``device`` if given (default: where it is). ``num_threads``
    sets ``torch.set_num_threads`` for the measurement (restored afterwards); the thread count in
    effect is recorded either way. CPU timings are sensitive to other processes on the machine.

    Returns ``{"ms_per_sample": {"<bs>": float}, "ms_per_batch": {"<bs>": float},
    "threads": torch.get_num_threads(), "device": str, "warmup": int, "iters": int}``
    (medians; string batch-size keys for JSON).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if device is not None:
        model.to(device)
    dev = _model_device(model)
    cuda = dev.type == "cuda"
    was_training = model.training
    model.eval()
    per_sample: dict[str, float] = {}
    per_batch: dict[str, float] = {}
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    threads = torch.get_num_threads()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    try:
        with torch.inference_mode():
            for bs in batch_sizes:
                bs = int(bs)
                x = torch.randn(bs, in_chans, img_size, img_size, device=dev)
                for _ in range(max(int(warmup), 0)):
                    model(x)
                sync()
                times = []
                for _ in range(int(iters)):
                    sync()
                    t0 = time.perf_counter()
                    model(x)
                    sync()
                    times.append(time.perf_counter() - t0)
                med_ms = statistics.median(times) * 1000.0
                per_batch[str(bs)] = float(med_ms)
                per_sample[str(bs)] = float(med_ms / bs)
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    return {
        "ms_per_sample": per_sample,
        "ms_per_batch": per_batch,
        "threads": int(threads),
        "device": f"{dev} ({name})",
        "warmup": int(warmup),
        "iters": int(iters),
    }


def profile_model(
    model: nn.Module,
    img_size: int = 32,
    in_chans: int = 3,
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 5,
    iters: int = 20,
    device: Optional[Union[str, torch.device]] = None,
    latency: bool = True,
    num_threads: Optional[int] = None,
) -> dict:
    """Parameters, FLOPs and (optionally) latency in one JSON-serialisable dict.

    Returns ``{"params": count_params, "flops": count_flops | None, "latency": measure_latency |
    None, "params_total": int, "flops_per_sample": int | None, "norm_flops_per_sample": int |
    None, "latency_ms_per_sample": float | None}``. ``latency_ms_per_sample`` is the median per
    sample at the *largest* batch size (throughput); the per-batch-size numbers are in
    ``latency``. A failing FLOP count or latency measurement is reported as a warning, None and
    an ``"<part>_error"`` string, not an exception.
    """
    if device is not None:
        model.to(device)
    out: dict = {"params": count_params(model)}
    out["params_total"] = out["params"]["total"]
    try:
        out["flops"] = count_flops(model, img_size=img_size, in_chans=in_chans)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"FLOP count failed: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
        out["flops"], out["flops_error"] = None, f"{type(exc).__name__}: {exc}"
    out["flops_per_sample"] = out["flops"]["total"] if out["flops"] else None
    out["norm_flops_per_sample"] = out["flops"]["norm"] if out["flops"] else None
    out["latency"] = None
    out["latency_ms_per_sample"] = None
    if latency and batch_sizes:
        try:
            out["latency"] = measure_latency(
                model,
                batch_sizes=batch_sizes,
                warmup=warmup,
                iters=iters,
                img_size=img_size,
                in_chans=in_chans,
                num_threads=num_threads,
            )
            largest = str(max(int(b) for b in batch_sizes))
            out["latency_ms_per_sample"] = out["latency"]["ms_per_sample"][largest]
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"latency measurement failed: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
            out["latency_error"] = f"{type(exc).__name__}: {exc}"
    return out
