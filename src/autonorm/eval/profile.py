"""Model cost: parameters, FLOPs (fvcore with the project's op handles) and latency.

FLOP convention (one, used in every file: ``profile.json``, the tables, ``scripts/bench.py``)
--------------------------------------------------------------------------------------------
**Every arithmetic operation on one element is one FLOP; a multiply-add is two** (the convention
of the literature and of the DyT and AFN papers). Per sample (a batch of one), forward pass:

* matrix products (linear, matmul, mm, bmm, addmm, convolution, einsum): ``2`` per multiply-add
  (fvcore's counts, which are one per multiply-add, doubled), plus ``1`` per output element for a
  bias;
* ``scaled_dot_product_attention`` with q (..., L, E), k (..., S, E), v (..., S, Ev):
  ``2 * L * S * (E + Ev)`` per batch-head for QK^T and AV, plus ``5 * L * S`` for the scaling
  (1) and the softmax (4) of the score matrix;
* element-wise ops, one per output element: add, sub, rsub, mul, div, neg, abs, exp, log, sqrt,
  rsqrt, pow, reciprocal, square, and every activation (tanh, sigmoid, gelu, silu, relu,
  softplus, erf) counts 1; ``addcmul``/``addcdiv`` 2; ``lerp`` 3 (sub, mul, add);
* reductions, per input element: ``mean``/``sum`` 1; ``var``/``std`` (and ``var_mean`` /
  ``std_mean``) 4 (mean, subtract, square, accumulate); ``softmax`` / ``log_softmax`` 4
  (subtract the maximum, exp, accumulate, divide);
* ``layer_norm``: 7 per element with an affine (mean 1, centre 1, variance 2, scale 1, affine 2),
  5 without; ``batch_norm`` at inference: 2 per element (the folded affine).

Data movement (view, reshape, cat, indexing), comparisons, max/min selection and clamp count 0.
The ``norm`` cost is fvcore's ``by_module`` total over the model's ``norm_points()`` (every
injected norm module, gates included), so ``total - norm`` is the same for every norm choice.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
import warnings
from math import prod
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from autonorm.norms import eager_formulas
from autonorm.runtime import malloc_state

__all__ = [
    "FLOP_CONVENTION",
    "MATRIX_OPS",
    "count_flops",
    "count_params",
    "interleaved_latency",
    "measure_latency",
    "profile_model",
]

FLOP_CONVENTION = (
    "2 FLOPs per multiply-add (matrix products, convolutions, attention QK^T and AV) + 1 per "
    "bias element; element-wise ops 1 per output element (addcmul/addcdiv 2, lerp 3); mean/sum 1, "
    "var/std 4, softmax 4 per input element (+1 attention scaling); layer_norm 7 per element "
    "(affine), batch_norm 2; forward pass, per sample (batch of 1); fvcore with project handles."
)

#: fvcore's matrix-product ops (one per multiply-add there; doubled here) and the input holding
#: the bias (None: no bias argument)
MATRIX_OPS: dict[str, Optional[int]] = {
    "aten::linear": 2,
    "aten::addmm": 0,
    "aten::_convolution": 2,
    "aten::matmul": None,
    "aten::mm": None,
    "aten::bmm": None,
    "aten::einsum": None,
}


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


def _matrix(op: str, bias_arg: Optional[int]):
    """fvcore's handle for ``op`` doubled (2 FLOPs per multiply-add), plus the bias additions."""
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    base = _DEFAULT_SUPPORTED_OPS[op]

    def handle(inputs: list, outputs: list) -> int:
        counted = base(inputs, outputs)  # an int, or a Counter {op: count} for some handles
        flops = 2 * int(sum(counted.values()) if hasattr(counted, "values") else counted)
        if bias_arg is not None and len(inputs) > bias_arg and _shape(inputs[bias_arg]) is not None and outputs:
            flops += _numel(outputs[0])
        return flops

    return handle


def _layer_norm(inputs: list, outputs: list) -> int:
    """7 FLOPs per element with an affine weight (input 2 of aten::layer_norm), 5 without."""
    affine = len(inputs) > 2 and _shape(inputs[2]) is not None
    return (7 if affine else 5) * _numel(inputs[0])


def _sdpa_flop(inputs: list, outputs: list) -> int:
    """QK^T and AV (2 per multiply-add) + scaling and softmax of the (L, S) scores per batch-head."""
    q, k, v = (_shape(t) for t in inputs[:3])
    if q is None or k is None or v is None:
        return 0
    batch = int(prod(q[:-2]))
    length, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    scores = batch * length * s
    return int(2 * scores * (e + ev) + 5 * scores)


_ELEMENTWISE_1 = [
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow",
    "reciprocal", "tanh", "sigmoid", "gelu", "silu", "relu", "softplus", "erf", "maximum",
    "minimum", "square",
]  # fmt: skip


def _extra_handles() -> dict[str, Any]:
    """Op name -> fvcore handle for everything the defaults miss (see module docstring)."""
    handles: dict[str, Any] = {op: _matrix(op, bias) for op, bias in MATRIX_OPS.items()}
    for op in _ELEMENTWISE_1:
        handles[f"aten::{op}"] = _per_output(1)
        handles[f"aten::{op}_"] = _per_output(1)
    for op, scale in (("addcmul", 2), ("addcdiv", 2), ("lerp", 3)):
        handles[f"aten::{op}"] = _per_output(scale)
        handles[f"aten::{op}_"] = _per_output(scale)
    for op, scale in (
        ("mean", 1), ("sum", 1), ("var", 4), ("std", 4), ("var_mean", 4), ("std_mean", 4),
        ("softmax", 4), ("_softmax", 4), ("log_softmax", 4), ("_log_softmax", 4),
    ):  # fmt: skip
        handles[f"aten::{op}"] = _per_input(scale)
    handles["aten::scaled_dot_product_attention"] = _sdpa_flop
    handles["aten::layer_norm"] = _layer_norm
    handles["aten::native_layer_norm"] = _layer_norm  # batch_norm: fvcore's (2 per element in eval)
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
    # Count the model's FLOPs, not those of an implementation: trace the eager norm formulas
    # (eager_formulas: the C++ kernels are opaque to the tracer, the sigmoid identity of
    # impl=fused counts differently) and the fused attention op (one handle, whichever attention
    # path runs).
    switched = [(m, "attention", "sdpa") for m in model.modules() if hasattr(m, "attention") and hasattr(m, "explicit")]
    saved = [getattr(m, attr) for m, attr, _ in switched]
    try:
        for m, attr, value in switched:
            setattr(m, attr, value)
        with torch.no_grad(), eager_formulas(), warnings.catch_warnings():
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


def wait_policy() -> Optional[str]:
    """This process's ``OMP_WAIT_POLICY`` (None: the OpenMP default), recorded with every latency
    figure because it changes them and their ratios (see :func:`interleaved_latency`)."""
    return os.environ.get("OMP_WAIT_POLICY")


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
    "threads": torch.get_num_threads(), "device": str, "warmup": int, "iters": int,
    "omp_wait_policy": str | None, "malloc_tuned": bool}`` (medians; string batch-size keys for
    JSON; ``malloc_tuned``: whether :func:`autonorm.runtime.tune_malloc` is in effect).
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
        "omp_wait_policy": wait_policy(),
        "malloc_tuned": malloc_state()["tuned"],
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
    None, "flop_convention": str, "latency_ms_per_sample": float | None}``.
    ``latency_ms_per_sample`` means, in every file of the project, the median forward time of one
    image at batch size 1 in ms (None when batch 1 is not measured); other batch sizes are in
    ``latency``. This measurement is a single run's, right after training; tables measure their
    rows' models together (:func:`interleaved_latency`). A failing FLOP count or latency
    measurement is reported as a warning, None and an ``"<part>_error"`` string, not an exception.
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
    out["flop_convention"] = FLOP_CONVENTION
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
            out["latency_ms_per_sample"] = out["latency"]["ms_per_sample"].get("1")
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"latency measurement failed: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)
            out["latency_error"] = f"{type(exc).__name__}: {exc}"
    return out


def interleaved_latency(
    models: dict[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 256),
    threads: Optional[int] = None,
    rounds: int = 7,
    warmup: int = 3,
    min_block_s: float = 0.05,
    img_size: int = 32,
    in_chans: int = 3,
) -> dict:
    """Forward latency of several models measured together, so that they compare.

    One process, ``threads`` torch threads for all (default: the current count), eval mode under
    ``torch.inference_mode`` on the CPU. Per batch size: ``warmup`` untimed forwards of every
    model; then ``rounds`` rounds in which every model is timed once (a
    ``torch.utils.benchmark.Timer`` block of enough forwards to last ``min_block_s``), the order
    rotating by one model each round so that none always runs first or after the same neighbour;
    each model's figure is the median over rounds of the per-forward time.

    Returns ``{"models": {name: {"ms_per_sample": {"<bs>": float}, "images_per_s": {"<bs>":
    float}}}, "threads", "rounds", "warmup", "batch_sizes", "device", "omp_wait_policy",
    "malloc_tuned"}``:
    ``ms_per_sample`` is the median forward time divided by the batch size (at batch 1: the
    latency of one image), ``images_per_s`` its inverse; ``omp_wait_policy`` is the process's
    ``OMP_WAIT_POLICY`` (None: the OpenMP default), which changes these figures and their ratios:
    with ``passive`` every parallel region wakes sleeping threads, which costs most where a model
    runs many small operations (batch 1, the adaptive norms).
    """
    from torch.utils.benchmark import Timer

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    threads = int(threads or torch.get_num_threads())
    names = list(models)
    states = {n: models[n].training for n in names}
    for n in names:
        models[n].eval().cpu()
    result: dict[str, Any] = {n: {"ms_per_sample": {}, "images_per_s": {}} for n in names}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for bs in batch_sizes:
            x = torch.randn(int(bs), in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
            timers, number = {}, {}
            with torch.inference_mode():
                for n in names:
                    for _ in range(max(int(warmup), 1)):
                        models[n](x)
                    timers[n] = Timer("model(x)", globals={"model": models[n], "x": x, "torch": torch},
                                      num_threads=threads, setup="torch.set_grad_enabled(False)")
                    once = timers[n].timeit(1).median
                    number[n] = max(1, int(math.ceil(min_block_s / max(once, 1e-9))))
                times: dict[str, list[float]] = {n: [] for n in names}
                for r in range(int(rounds)):
                    for n in names[r % len(names):] + names[: r % len(names)]:
                        times[n].append(timers[n].timeit(number[n]).median)
            for n in names:
                med = statistics.median(times[n])
                result[n]["ms_per_sample"][str(bs)] = 1000.0 * med / int(bs)
                result[n]["images_per_s"][str(bs)] = int(bs) / med
    finally:
        torch.set_num_threads(old_threads)
        for n in names:
            models[n].train(states[n])
    return {"models": result, "threads": threads, "rounds": int(rounds), "warmup": int(warmup),
            "batch_sizes": [int(b) for b in batch_sizes], "device": "cpu",
            "omp_wait_policy": wait_policy(), "malloc_tuned": malloc_state()["tuned"]}
