#!/usr/bin/env python
"""Performance benchmark of the norms, the training stack and the data path.

Usage::

    python scripts/bench.py [--quick] [--out outputs/bench/bench.json] [--models vit_micro,vit_tiny]
                            [--device cpu|cuda] [--precision 32-true|bf16-mixed] [--compile]
                            [--impl auto|fused|eager|compiled] [--bf16-speedup]

Defaults: CPU, float32, eager modules, the norms' ``impl`` from ``conf/norm`` (``auto``).
``--precision bf16-mixed`` runs training steps and inference under ``torch.autocast`` (bfloat16)
and compares throughput with the bfloat16 matmul rate; ``--compile`` wraps every model in
``torch.compile`` (compilation happens in the untimed warm-up); ``--device cuda`` runs on the
first GPU (CUDA events are synchronised after every timed call) and skips the two CPU-only
figures (Lightning overhead, data path). ``--impl`` forces one implementation on every norm.

The machine is recorded in the JSON and printed: CPU model and instruction-set flags, torch
threads, the GPU's name, and the measured matmul rates in float32 and bfloat16 (GFLOP/s, an
n x n x n product counted as 2 n^3 FLOPs). Ratios are only ever formed within one run; figures
from different machines are not comparable.

Everything is measured in ONE process. Every comparison is INTERLEAVED: the variants being
compared run round-robin (one "round" = a few timed repetitions of each variant, the starting
variant rotating from round to round), and each figure is the median over rounds of the per-round
ratio (a per-round ratio divides medians taken within the same round, so slow drifts of the
machine's speed cancel). Warm-up repetitions run before the first round and are not timed. The
harness is :mod:`autonorm.eval.timing` (on ``torch.utils.benchmark``; the matmul reference rates
come from ``torch.utils.benchmark.Timer.blocked_autorange``); the machine description and the
idleness check are :mod:`autonorm.eval.machine`; configs are composed by :mod:`autonorm.configs`.

Figures (each printed as ``RATIO <name> <value> (target <= <x>)`` or ``(target >= <x>)``):

1. ``train_step/<model>/<norm>``: time of one training step of the project's
   ``ClassificationTask`` without Lightning (forward, its loss, backward, AdamW step over its
   parameter groups with the train config's ``optim``, zero_grad) on a fixed random batch (vit_micro: 128, vit_tiny: 256 images of
   32x32), divided by the same for LayerNorm. Targets on vit_tiny (:data:`TRAIN_TARGET_MODELS`):
   DyT <= 1.00, AutoNorm soft/gumbel <= 1.05, AFN <= 1.10; informational on other models.
2. ``inference/<model>/<norm>``: eval-mode forward under ``torch.inference_mode`` of a batch of
   256, divided by LayerNorm's. If the model has a ``deploy()`` method, the deployed copy is also
   measured (``inference_deployed/<model>/<norm>``; targets: DyT <= 1.00, hard-gated AutoNorm
   <= 1.05, soft AutoNorm <= 1.15, which computes both branches) and the
   undeployed ratio becomes informational.
3. ``lightning_overhead``: per-step time of a ``pl.Trainer`` fit of ``ClassificationTask`` over a
   :class:`~autonorm.data.BatchLoader` divided by the per-step time of a plain PyTorch loop doing
   the same work (see :func:`measure_lightning`), target <= 1.03.
4. ``data_path``: images/s the BatchLoader delivers with CIFAR augmentation (random crop with
   padding 4 + horizontal flip) divided by images/s the vit_micro training step consumes,
   target >= 10.
5. ``throughput_vs_matmul/<model>/<norm>``: achieved training GFLOP/s (3 x forward FLOPs per
   step / step time) divided by the GFLOP/s of a 2048x2048 @ 2048x2048 matmul in the run's
   precision (float32, or bfloat16 with ``--precision bf16-mixed``), target >= 0.60. Both count
   2 FLOPs per multiply-add (the project's one convention, ``autonorm.eval.profile.FLOP_CONVENTION``).
6. ``speedup/<model>/<setting>/<norm>`` (only with ``--bf16-speedup``, which measures nothing
   else): each norm's training step in float32 and under bfloat16 autocast (with ``--compile``
   also both under ``torch.compile``), all interleaved in one round-robin; float32 eager step
   time / the setting's step time (above 1: faster than the float32 eager step).
   Informational: whether to train in bf16 also needs its accuracy checked over seeds.
7. ``auto_vs_best/<train_step|inference_deployed>/<model>/<norm>`` (CPU, float32, eager modules,
   the configs' ``impl``; ``--paths`` measures only these): each norm's training step and deployed
   forward with ``impl=auto`` and with every path forced (``kernels``: ``impl=fused`` with the
   C++ kernels; ``torch``: ``impl=fused`` inside ``autonorm.kernels.native.turned_off()``, the
   torch-op kernels; ``eager``: the eager formula), all interleaved in one round-robin; the median
   over rounds of (auto's time / the fastest forced path's time in that round). Target <= 1.05:
   ``auto`` as fast as the best path it chooses among, within the noise of one run.

8. ``malloc_speedup/<model>/<norm>`` (only with ``--malloc``, which measures nothing else): a
   training step with glibc malloc at its defaults divided by the same with the thresholds the
   entry points raise (:func:`autonorm.runtime.tune_malloc`). The setting is process-wide, so
   each round runs two fresh processes, one per setting, in alternating order; each times LN and
   the other norms' steps in turn and reports its medians and its minor page faults per step.
   The figure is the median over rounds of the per-round ratio. Informational.

Before measuring, the script samples the machine's CPU use by other processes for ~1 s
(``/proc/stat`` minus this process) and reads ``/proc/loadavg``; it repeats the accounting over
the whole run. Other processes using >= 0.25 cores (before, or on average during the run) make the
machine "busy": a ``WARNING`` line and ``"machine_busy": true`` in the JSON; the figures are still
produced. (The load average is recorded, but lags by a minute, so it decides only where
``/proc/stat`` is unreadable.) ``--quick`` (< 2 min on 2 cores): vit_micro only, no figure 7, 3-4 rounds,
fewer repetitions and shorter Lightning runs; the same figures otherwise.

The script sets ``OMP_WAIT_POLICY=passive`` (unless already set, or with ``--omp-default``, which
leaves OpenMP's own default) before importing torch and uses as many torch threads as the process
may use cores. The policy changes the figures and their ratios (README, Performance); it is
recorded in the JSON. Like training, it raises glibc malloc's thresholds
(:func:`autonorm.runtime.tune_malloc`; ``AUTONORM_MALLOC=default`` leaves them), also recorded.
"""

from __future__ import annotations

import os
import sys


def omp_wait_policy(argv: list[str], env: dict) -> "str | None":
    """The ``OMP_WAIT_POLICY`` the benchmark runs under: the one set in ``env``; else ``passive``,
    or none (OpenMP's default) with ``--omp-default`` in ``argv``."""
    if "OMP_WAIT_POLICY" in env:
        return env["OMP_WAIT_POLICY"]
    return None if "--omp-default" in argv else "passive"


if (_policy := omp_wait_policy(sys.argv, dict(os.environ))) is not None:  # must precede the first torch import
    os.environ["OMP_WAIT_POLICY"] = _policy

import argparse
import copy
import gc
import importlib.util
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("autonorm") is None:  # running from a checkout without the install
    sys.path.insert(0, str(REPO / "src"))

from omegaconf import OmegaConf  # noqa: E402

from autonorm.build import build_model  # noqa: E402
from autonorm.config import ConfigError  # noqa: E402
from autonorm.configs import compose, load_group  # noqa: E402
from autonorm.eval.machine import BUSY_OTHER_CORES, check_idle, cpu_counters, loadavg, machine_info, other_cores, usable_cores  # noqa: E402
from autonorm.runtime import malloc_state, tune_malloc  # noqa: E402
from autonorm.eval.timing import all_median, median, per_round_medians, ratio_of_rounds, round_robin, statement_seconds  # noqa: E402
from autonorm.pipeline.io import atomic_write_json  # noqa: E402

DEFAULT_OUT = REPO / "outputs" / "bench" / "bench.json"

#: Training batch per model (other models: 256).
TRAIN_BATCH = {"vit_micro": 128, "vit_micro_conv": 128, "vit_tiny": 256}
#: Norm variants: (norm config, gate config or None).
VARIANTS: dict[str, tuple[str, Optional[str]]] = {
    "ln": ("ln", None),
    "dyt": ("dyt", None),
    "autonorm_soft": ("autonorm", "soft"),
    "autonorm_gumbel": ("autonorm", "gumbel"),
    "afn": ("afn", None),
    "derf": ("derf", None),  # no target and no fast paths: OPT_IN_VARIANTS, informational
}
TRAIN_VARIANTS = ("ln", "dyt", "autonorm_soft", "autonorm_gumbel", "afn")
#: Variants run only on request (--variants), in training and inference.
OPT_IN_VARIANTS = ("derf",)
INFER_VARIANTS = ("ln", "dyt", "autonorm_soft", "autonorm_gumbel")
TRAIN_TARGETS = {"dyt": 1.00, "autonorm_soft": 1.05, "autonorm_gumbel": 1.05, "afn": 1.10}
#: The models the training-step targets are set for; on others the ratio is informational (their
#: target is auto_vs_best: no norm slower than the best of its paths).
TRAIN_TARGET_MODELS = ("vit_tiny",)
PRECISIONS = ("32-true", "bf16-mixed")
#: Deployed inference vs LN: a soft AutoNorm computes both branches, a hard-gated one picks one per sample.
INFER_TARGETS = {"dyt": 1.00, "autonorm_gumbel": 1.05, "autonorm_soft": 1.15}
LIGHTNING_TARGET = 1.03
DATA_PATH_TARGET = 10.0
MATMUL_TARGET = 0.60
#: impl=auto vs the fastest forced path, in one interleaved run (the margin is the noise of one run).
AUTO_TARGET = 1.05
#: Forced paths that impl=auto is compared with: name -> (impl, inside native.turned_off()).
FORCED_PATHS: dict[str, tuple[str, bool]] = {"kernels": ("fused", False), "torch": ("fused", True), "eager": ("eager", False)}
#: Every path figure 7 times: auto and the forced ones.
PATHS: dict[str, tuple[str, bool]] = {"auto": ("auto", False), **FORCED_PATHS}


# ----------------------------------------------------------------------------------- configuration
@dataclass
class ModelSpec:
    """One model to benchmark: its ``model`` config, training batch and repetition counts."""

    name: str
    cfg: dict[str, Any]
    train_batch: int
    rounds: int = 5
    steps_per_round: int = 2
    warmup: int = 2


@dataclass
class BenchConfig:
    """Everything :func:`run_benchmark` measures and how often."""

    models: list[ModelSpec]
    mode: str = "full"
    device: str = "cpu"
    precision: str = "32-true"  # or bf16-mixed (torch.autocast to bfloat16)
    compile: bool = False
    impl: Optional[str] = None  # None: the configs' impl
    matmul_min_run_s: float = 1.0  # per dtype, torch.utils.benchmark.Timer.blocked_autorange
    infer_batch: int = 256
    infer_rounds: int = 5
    infer_iters_per_round: int = 3
    infer_warmup: int = 2
    lightning_model: Optional[ModelSpec] = None  # default: the first model
    lightning_steps: int = 30
    lightning_skip: int = 5
    lightning_rounds: int = 6
    data_model: Optional[ModelSpec] = None  # default: the first model
    data_batches_per_pass: int = 20
    data_rounds: int = 5
    data_train_steps_per_round: int = 2
    matmul_n: int = 2048
    num_classes: int = 10
    img_size: int = 32
    idle_sample_s: float = 1.0
    train_variants: tuple[str, ...] = TRAIN_VARIANTS
    infer_variants: tuple[str, ...] = INFER_VARIANTS
    paths: bool = True  # figure 7 (auto vs every forced path), where it applies (see paths_apply)


def load_model_cfg(name: str) -> dict[str, Any]:
    """The ``model=<name>`` group as a plain dict."""
    try:
        return OmegaConf.to_container(load_group("model", name), resolve=True)  # type: ignore[return-value]
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def norm_cfg(variant: str, impl: Optional[str] = None) -> dict[str, Any]:
    """The ``norm`` config of a variant as a run composes it (with its gate for AutoNorm), with
    ``impl`` forced when given (LayerNorm has none)."""
    norm, gate = VARIANTS[variant]
    cfg = compose(["~local", f"norm={norm}", f"gate={gate or 'soft'}"])
    out: dict[str, Any] = OmegaConf.to_container(cfg.norm, resolve=True)  # type: ignore[assignment]
    if impl is not None and "impl" in out:
        out["impl"] = impl
    return out


def optim_cfg() -> dict[str, Any]:
    """The ``optim`` block of the train config."""
    return dict(OmegaConf.to_container(compose(["~local"]).optim, resolve=True))  # type: ignore[arg-type]


def model_spec(name: str, quick: bool = False) -> ModelSpec:
    """Repetition counts per model, scaled to its step time on a 2-core CPU."""
    cfg = load_model_cfg(name)
    batch = TRAIN_BATCH.get(name, 256)
    small = name == "vit_micro"
    if quick:
        return ModelSpec(name, cfg, batch, rounds=4, steps_per_round=2 if small else 1, warmup=1)
    return ModelSpec(name, cfg, batch, rounds=9 if small else 7, steps_per_round=3 if small else 1, warmup=2 if small else 1)


def default_config(quick: bool = False, models: Optional[Sequence[str]] = None) -> BenchConfig:
    """Full run (vit_micro and vit_tiny) or ``--quick`` (vit_micro only, fewer repetitions)."""
    names = list(models) if models else (["vit_micro"] if quick else ["vit_micro", "vit_tiny"])
    specs = [model_spec(n, quick) for n in names]
    micro = model_spec("vit_micro", quick)
    if quick:
        return BenchConfig(
            models=specs, mode="quick", infer_rounds=3, infer_iters_per_round=2, infer_warmup=1,
            lightning_model=micro, lightning_steps=14, lightning_skip=3, lightning_rounds=3, paths=False,
            data_model=micro, data_batches_per_pass=10, data_rounds=3, data_train_steps_per_round=1,
        )  # fmt: skip
    return BenchConfig(models=specs, mode="full", lightning_model=micro, data_model=micro)


# ---------------------------------------------------------------------------- what ran
def auto_choices() -> dict[str, Any]:
    """The choices ``impl="auto"`` made (or read from its cache) in this process."""
    from autonorm.kernels import select

    return select.choices()


def native_status() -> dict[str, Any]:
    """Whether ``impl=fused`` ran the C++ kernels (and why not, when it did not)."""
    from autonorm.kernels import native

    st = native.status()
    return {"available": st["available"], "error": st["error"]}


# --------------------------------------------------------------------------------------- models
def build(spec: ModelSpec, variant: str, num_classes: int = 10, impl: Optional[str] = None, device: str = "cpu") -> nn.Module:
    """A freshly initialised ViT of ``spec`` with the norm ``variant`` on ``device``."""
    torch.manual_seed(0)
    return build_model(spec.cfg, norm_cfg(variant, impl), num_classes).to(device)


def _autocast(device: str, precision: str) -> Any:
    """``torch.autocast`` to bfloat16 for ``bf16-mixed``, a no-op context for ``32-true``."""
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def _maybe_compile(model: nn.Module, compile: bool) -> Callable[..., Any]:
    return torch.compile(model) if compile else model


def build_task(spec: ModelSpec, variant: str, cfg: BenchConfig) -> Any:
    """The project's ``ClassificationTask`` (the train config's ``optim``) around a freshly
    initialised ViT of ``spec`` with the norm ``variant`` (the same weights as :func:`build`)."""
    from autonorm.tasks import ClassificationTask

    torch.manual_seed(0)
    task = ClassificationTask(spec.cfg, norm_cfg(variant, cfg.impl), cfg.num_classes, optim_cfg(), compile=cfg.compile)
    task.configure_model()  # torch.compile of the model with --compile (compiled in the warm-up)
    return task.to(cfg.device)


def _train_step_fn(task: Any, x: torch.Tensor, y: torch.Tensor, precision: str = "32-true") -> Callable[[], None]:
    """One training step of ``task`` without Lightning: its loss, backward, AdamW step, zero_grad."""
    task.train()
    opt = task.optimizer()

    def step() -> None:
        with _autocast(x.device.type, precision):
            loss = task.training_loss(x, task(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _infer_fn(model: nn.Module, x: torch.Tensor, precision: str = "32-true", compile: bool = False) -> Callable[[], None]:
    model.eval()
    fwd_model = _maybe_compile(model, compile)

    def fwd() -> None:
        with torch.inference_mode(), _autocast(x.device.type, precision):
            fwd_model(x)

    return fwd


def _batch(n: int, img: int, num_classes: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, img, img, generator=g), torch.randint(0, num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


def measure_matmul(cfg: BenchConfig) -> dict[str, Any]:
    """The machine's matmul rate in float32 and bfloat16 (GFLOP/s, 2 n^3 FLOPs per n x n x n
    product): the median block of ``torch.utils.benchmark.Timer.blocked_autorange``."""
    n = cfg.matmul_n
    flop = 2.0 * n**3
    gflops, times = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=cfg.device).to(dtype)
        b = torch.randn(n, n, device=cfg.device).to(dtype)
        m = statement_seconds("torch.mm(a, b)", {"torch": torch, "a": a, "b": b}, cfg.matmul_min_run_s)
        gflops[name], times[name] = flop / m.median / 1e9, list(m.times)
    return {"n": n, "gflops": gflops, "convention": "2 FLOPs per multiply-add (2 n^3 per n x n x n product)", "times": times}


def flops_per_sample(model: nn.Module, img_size: int = 32) -> dict[str, Any]:
    """Forward FLOPs per sample (2 per multiply-add) with their source.

    ``autonorm.eval.profile.count_flops`` (fvcore, 2 FLOPs per multiply-add) when importable. Otherwise the
    estimate ``2 * params * tokens`` (the weight matmuls only; attention scores not counted).
    """
    try:
        from autonorm.eval.profile import count_flops

        res = count_flops(model, img_size=img_size)
        flops = int(res["total"])
        if flops <= 0:
            raise ValueError("fvcore counted no FLOPs")
        return {"flops": float(flops), "source": "fvcore"}
    except Exception as exc:  # noqa: BLE001
        params = sum(p.numel() for p in model.parameters())
        tokens = (img_size // _patch(model)) ** 2 + 1
        return {"flops": float(2 * params * tokens), "source": f"estimate 2*params*tokens ({type(exc).__name__}: {exc})"}


def _patch(model: nn.Module) -> int:
    try:
        return int(model.patch_embed.proj.kernel_size[0])  # type: ignore[union-attr,index]
    except AttributeError:
        return 4


def has_deploy(model: nn.Module) -> bool:
    """Whether the model offers ``deploy()``."""
    return callable(getattr(model, "deploy", None))


def deployed_copy(model: nn.Module) -> nn.Module:
    """``deploy()`` applied to a deep copy (returns what ``deploy`` returns if it is a module)."""
    m = copy.deepcopy(model).eval()
    out = m.deploy()  # type: ignore[operator]
    return out if isinstance(out, nn.Module) else m


# ------------------------------------------------------------------------------- measurements
def measure_training(spec: ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Training-step times of every norm variant of ``spec`` interleaved with a reference matmul.

    Returns raw per-round times (``times``), medians, per-variant ratios to LN and the
    throughput-vs-matmul ratios.
    """
    x, y = _batch(spec.train_batch, cfg.img_size, cfg.num_classes, device=cfg.device)
    units: dict[str, Callable[[], Any]] = {}
    flops: dict[str, dict[str, Any]] = {}
    for v in cfg.train_variants:
        task = build_task(spec, v, cfg)
        flops[v] = flops_per_sample(task.model, cfg.img_size)
        units[v] = _train_step_fn(task, x, y, cfg.precision)
    n = cfg.matmul_n
    mm_dtype = torch.bfloat16 if cfg.precision == "bf16-mixed" else torch.float32
    a, b = torch.randn(n, n, device=cfg.device).to(mm_dtype), torch.randn(n, n, device=cfg.device).to(mm_dtype)
    units["matmul"] = lambda: torch.mm(a, b)
    reps = {v: spec.steps_per_round for v in cfg.train_variants}
    reps["matmul"] = 2
    times = round_robin(units, spec.rounds, reps, spec.warmup)
    mm_flop = 2.0 * n**3
    mm_rates = [mm_flop / t for t in per_round_medians(times["matmul"])]
    out: dict[str, Any] = {
        "batch": spec.train_batch,
        "rounds": spec.rounds,
        "steps_per_round": spec.steps_per_round,
        "warmup": spec.warmup,
        "median_step_s": {v: all_median(times[v]) for v in cfg.train_variants},
        "matmul_median_s": all_median(times["matmul"]),
        "matmul_gflops": median(mm_rates) / 1e9,
        "matmul_dtype": str(mm_dtype).replace("torch.", ""),
        "flops_per_sample": {v: flops[v]["flops"] for v in cfg.train_variants},
        "flops_source": {v: flops[v]["source"] for v in cfg.train_variants},
        "ratio_to_ln": {},
        "train_gflops": {},
        "throughput_vs_matmul": {},
        "times": times,
    }
    for v in cfg.train_variants:
        if v != "ln":
            out["ratio_to_ln"][v] = ratio_of_rounds(times[v], times["ln"])
        step_flop = 3.0 * flops[v]["flops"] * spec.train_batch
        rates = [step_flop / t for t in per_round_medians(times[v])]
        out["train_gflops"][v] = median(rates) / 1e9
        out["throughput_vs_matmul"][v] = median([r / m for r, m in zip(rates, mm_rates)])
    return out


def measure_bf16_speedup(spec: ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Does ``trainer.precision=bf16-mixed`` (with ``--compile``: and ``torch.compile``) pay on this
    machine? Every training variant's step in float32 and under bfloat16 autocast (with
    ``cfg.compile`` also both compiled), all interleaved in one round-robin. ``speedup[setting][v]``
    is the median over rounds of (eager float32 step time / the setting's step time): above 1,
    faster than today's float32 eager step."""
    x, y = _batch(spec.train_batch, cfg.img_size, cfg.num_classes, device=cfg.device)
    settings = [(p, False) for p in PRECISIONS] + ([(p, True) for p in PRECISIONS] if cfg.compile else [])
    units: dict[str, Callable[[], Any]] = {}
    for v in cfg.train_variants:
        for precision, compiled in settings:
            task = build_task(spec, v, replace(cfg, compile=compiled))
            units[f"{v}@{precision}{'+compile' if compiled else ''}"] = _train_step_fn(task, x, y, precision)
    times = round_robin(units, spec.rounds, spec.steps_per_round, spec.warmup)
    names = [f"{p}{'+compile' if c else ''}" for p, c in settings]
    return {
        "batch": spec.train_batch,
        "rounds": spec.rounds,
        "median_step_s": {k: all_median(ts) for k, ts in times.items()},
        "speedup": {s: {v: ratio_of_rounds(times[f"{v}@32-true"], times[f"{v}@{s}"]) for v in cfg.train_variants} for s in names[1:]},
        "times": times,
    }


def paths_apply(cfg: BenchConfig) -> bool:
    """Figure 7 needs the configs' ``impl`` (auto) and the CPU float32 eager modules it chooses for."""
    return cfg.paths and cfg.impl in (None, "auto") and cfg.device == "cpu" and cfg.precision == "32-true" and not cfg.compile


def forced_paths() -> list[str]:
    """The forced paths to compare ``auto`` with here (``kernels`` only when the C++ kernels load)."""
    return [p for p in FORCED_PATHS if p != "kernels" or native_status()["available"]]


def _on_path(path: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run on ``path``: inside ``native.turned_off()`` for the torch-op path."""
    if not PATHS[path][1]:
        return fn
    from autonorm.kernels import native

    def run() -> Any:
        with native.turned_off():
            return fn()

    return run


def auto_vs_best(times: dict[str, list[list[float]]], variant: str, paths: Sequence[str]) -> dict[str, Any]:
    """``{"ratio": median over rounds of auto / fastest forced path, "fastest": {path: rounds it was
    fastest}}`` from the round-robin ``times`` keyed ``<variant>@<path>``."""
    auto = per_round_medians(times[f"{variant}@auto"])
    forced = {p: per_round_medians(times[f"{variant}@{p}"]) for p in paths}
    best = [min(forced, key=lambda p: forced[p][r]) for r in range(len(auto))]
    return {
        "ratio": median([a / forced[b][r] for r, (a, b) in enumerate(zip(auto, best))]),
        "fastest": {p: best.count(p) for p in paths},
        "ratio_to_auto": {p: ratio_of_rounds(times[f"{variant}@{p}"], times[f"{variant}@auto"]) for p in paths},
    }


def path_ratios(model: str, pa: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The figure-7 ratios of one model's :func:`measure_paths` result, each with its raw entry."""
    note = "auto / fastest of " + ", ".join(pa["paths"])
    return [(make_ratio(f"auto_vs_best/{fig}/{model}/{v}", res["ratio"], AUTO_TARGET, note=note), res)
            for fig in ("train_step", "inference_deployed") for v, res in pa[fig].items()]  # fmt: skip


def measure_paths(spec: ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Figure 7: every norm's training step (batch ``spec.train_batch``) and deployed forward (batch
    ``cfg.infer_batch``) with ``impl=auto`` and on every forced path, interleaved; LN has no
    paths and is not run."""
    from autonorm.norms import set_impl

    paths = forced_paths()
    x, y = _batch(spec.train_batch, cfg.img_size, cfg.num_classes, device=cfg.device)
    train_units: dict[str, Callable[[], Any]] = {}
    several = {v for v in {*cfg.train_variants, *cfg.infer_variants} if "impl" in norm_cfg(v)}  # LN and Derf have one path
    variants = [v for v in cfg.train_variants if v in several]
    for v in variants:
        for p in ["auto", *paths]:
            task = build_task(spec, v, replace(cfg, impl=PATHS[p][0]))
            train_units[f"{v}@{p}"] = _on_path(p, _train_step_fn(task, x, y, cfg.precision))
    train = round_robin(train_units, spec.rounds, spec.steps_per_round, spec.warmup) if train_units else {}
    del train_units
    gc.collect()
    xi, _ = _batch(cfg.infer_batch, cfg.img_size, cfg.num_classes, seed=1, device=cfg.device)
    infer_units: dict[str, Callable[[], Any]] = {}
    deployed = []
    for v in (v for v in cfg.infer_variants if v in several):
        model = build(spec, v, cfg.num_classes, None, cfg.device)
        if not has_deploy(model):
            continue
        deployed.append(v)
        for p in ["auto", *paths]:
            m = deployed_copy(model)
            set_impl(m, PATHS[p][0])
            infer_units[f"{v}@{p}"] = _on_path(p, _infer_fn(m, xi, cfg.precision))
    infer = round_robin(infer_units, cfg.infer_rounds, cfg.infer_iters_per_round, cfg.infer_warmup) if infer_units else {}
    return {
        "paths": paths,
        "train_step": {v: auto_vs_best(train, v, paths) for v in variants},
        "inference_deployed": {v: auto_vs_best(infer, v, paths) for v in deployed},
        "median_s": {"train_step": {k: all_median(t) for k, t in train.items()}, "inference_deployed": {k: all_median(t) for k, t in infer.items()}},
        "times": {"train_step": train, "inference_deployed": infer},
    }


def measure_inference(spec: ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Eval-mode forward times (inference_mode, batch ``cfg.infer_batch``) of every variant,
    plus the ``deploy()``-ed copies where the model has that method."""
    x, _ = _batch(cfg.infer_batch, cfg.img_size, cfg.num_classes, seed=1, device=cfg.device)
    units: dict[str, Callable[[], Any]] = {}
    deploy = False
    for v in cfg.infer_variants:
        model = build(spec, v, cfg.num_classes, cfg.impl, cfg.device)
        if v == "ln" or not (cfg.compile and has_deploy(model)):
            # with --compile only the deployed copies are timed (each model costs a compilation)
            units[v] = _infer_fn(model, x, cfg.precision, cfg.compile)
        if has_deploy(model):
            deploy = True
            units[f"{v}+deploy"] = _infer_fn(deployed_copy(model), x, cfg.precision, cfg.compile)
    times = round_robin(units, cfg.infer_rounds, cfg.infer_iters_per_round, cfg.infer_warmup)
    out: dict[str, Any] = {
        "batch": cfg.infer_batch,
        "deploy_available": deploy,
        "median_forward_s": {k: all_median(t) for k, t in times.items()},
        "ratio_to_ln": {k: ratio_of_rounds(t, times["ln"]) for k, t in times.items() if k != "ln"},
        "times": times,
    }
    return out


def measure_lightning(spec: ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Per-step time of a Lightning fit vs a plain PyTorch loop doing the same work.

    Method: the same ``ClassificationTask`` (LayerNorm ViT of ``spec``, AdamW with the task's
    parameter groups and warmup-cosine LR schedule stepped per step) trains on the same
    ``BatchLoader`` batches (random uint8 images, crop 4 + flip, epoch 0 each time) for
    ``lightning_steps`` steps, alternately under ``pl.Trainer.fit`` (no logger, checkpointing,
    progress bar or model summary; ``limit_train_batches``) and under a plain loop that does the
    task's work (forward, loss, accuracy metric update, zero_grad, backward, AdamW step, LR
    scheduler step). A step's time is the interval between the starts of consecutive steps, taken
    from inside: in Lightning by a callback's ``on_train_batch_start`` timestamps (the batch has
    been fetched at that point), in the plain loop right after fetching the batch. So everything
    Lightning does per step (hooks, closure, ``self.log``, loop bookkeeping, scheduler stepping,
    fetching the next batch) is in the interval, and the fixed start-up/tear-down of ``fit`` is
    not. The first ``lightning_skip`` intervals of each run are dropped (warm-up); the figure is
    the median over rounds of (median Lightning interval / median plain interval).
    """
    import pytorch_lightning as pl

    from autonorm.data import BatchLoader
    from autonorm.tasks import ClassificationTask
    from autonorm.tasks.classify import WarmupCosine

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    steps = int(cfg.lightning_steps)
    g = torch.Generator().manual_seed(2)
    n_img = steps * spec.train_batch
    imgs = torch.randint(0, 256, (n_img, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, cfg.num_classes, (n_img,), generator=g)
    loader = BatchLoader(
        imgs, labels, spec.train_batch, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
        shuffle=True, drop_last=True, seed=0, crop_padding=4, flip=True,
    )  # fmt: skip
    optim = optim_cfg()
    torch.manual_seed(0)
    task = ClassificationTask(spec.cfg, norm_cfg("ln"), cfg.num_classes, optim)

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.starts.append(time.perf_counter())

    def lightning_run() -> list[float]:
        clock = StepClock()
        with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=steps,
                limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                default_root_dir=root,
            )  # fmt: skip
            trainer.fit(task, train_dataloaders=loader)
        return [b - a for a, b in zip(clock.starts, clock.starts[1:])]

    def plain_run() -> list[float]:
        model = task.model
        model.train()
        opt = task.optimizer()
        warm = int(float(optim.get("warmup_epochs", 0.0)) * steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupCosine(min(warm, steps // 2), steps, float(optim.get("min_lr_ratio", 0.0)))
        )
        acc = task.train_acc
        acc.reset()
        loader.set_epoch(0)
        starts = []
        it = iter(loader)
        for _ in range(steps):
            x, y = next(it)
            starts.append(time.perf_counter())
            logits = task(x)
            loss = task.training_loss(x, logits, y)
            acc(logits.detach(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc.reset()
        return [b - a for a, b in zip(starts, starts[1:])]

    runs: dict[str, list[list[float]]] = {"lightning": [], "plain": []}
    fns = {"lightning": lightning_run, "plain": plain_run}
    order = ["lightning", "plain"]
    for r in range(cfg.lightning_rounds):
        gc.collect()
        for name in order[r % 2 :] + order[: r % 2]:
            runs[name].append(fns[name]()[cfg.lightning_skip :])
    if any(len(t) == 0 for ts in runs.values() for t in ts):
        raise RuntimeError("lightning_steps must exceed lightning_skip + 1")
    return {
        "model": spec.name,
        "norm": "ln",
        "batch": spec.train_batch,
        "steps_per_run": steps,
        "skipped": cfg.lightning_skip,
        "rounds": cfg.lightning_rounds,
        "median_step_s": {k: all_median(v) for k, v in runs.items()},
        "ratio": ratio_of_rounds(runs["lightning"], runs["plain"]),
        "times": runs,
    }


def measure_data_path(spec: ModelSpec, cfg: BenchConfig) -> dict[str, Any]:
    """Images/s of a BatchLoader pass (crop 4 + flip, shuffled) vs images/s of the LN training
    step of ``spec``, interleaved (one loader pass and a few training steps per round)."""
    from autonorm.data import BatchLoader

    bs = spec.train_batch
    n_img = cfg.data_batches_per_pass * bs
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (n_img, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, cfg.num_classes, (n_img,), generator=g)
    loader = BatchLoader(
        imgs, labels, bs, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
        shuffle=True, drop_last=True, seed=0, crop_padding=4, flip=True,
    )  # fmt: skip
    delivered = len(loader) * bs

    def one_pass() -> None:
        for _batch_xy in loader:
            pass

    x, y = _batch(bs, cfg.img_size, cfg.num_classes)
    step = _train_step_fn(build_task(spec, "ln", replace(cfg, device="cpu", compile=False)), x, y)
    units = {"loader_pass": one_pass, "train_step": step}
    reps = {"loader_pass": 1, "train_step": cfg.data_train_steps_per_round}
    times = round_robin(units, cfg.data_rounds, reps, warmup=1)
    load_rates = [delivered / t for t in per_round_medians(times["loader_pass"])]
    train_rates = [bs / t for t in per_round_medians(times["train_step"])]
    return {
        "model": spec.name,
        "batch": bs,
        "images_per_pass": delivered,
        "augmentation": "random crop (padding 4) + horizontal flip",
        "loader_images_per_s": median(load_rates),
        "train_images_per_s": median(train_rates),
        "ratio": median([a / b for a, b in zip(load_rates, train_rates)]),
        "times": times,
    }


# ------------------------------------------------------------------------------------ reporting
def make_ratio(name: str, value: float, target: float, op: str = "<=", note: str = "", informational: bool = False) -> dict[str, Any]:
    """One figure: value, target, comparison and pass/fail."""
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', got {op!r}")
    passed = value <= target if op == "<=" else value >= target
    return {"name": name, "value": float(value), "target": float(target), "op": op, "pass": bool(passed),
            "note": note, "informational": bool(informational)}  # fmt: skip


def format_ratio_line(r: dict[str, Any]) -> str:
    """``RATIO <name> <value> (target <= <x>)`` (or ``>=``)."""
    return f"RATIO {r['name']} {r['value']:.3f} (target {r['op']} {r['target']:.2f})"


def _fmt(v: Optional[float]) -> str:
    return "?" if v is None else f"{v:.2f}"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def idle_before(cfg: BenchConfig) -> dict[str, Any]:
    """The idleness check before measuring; a busy machine gets a WARNING line (figures still made)."""
    before = check_idle(cfg.idle_sample_s)
    if before["busy"]:
        print(
            f"WARNING: machine busy before the benchmark (other processes use {_fmt(before['other_cpu_cores'])} cores, "
            f"loadavg {before['loadavg']}); figures are unreliable",
            flush=True,
        )
    return before


def idle_during(counters: Any) -> dict[str, Any]:
    """Other processes' CPU use since ``counters`` (``cpu_counters()`` taken before measuring); a
    busy machine gets a WARNING line."""
    during = {"other_cpu_cores": other_cores(counters, cpu_counters()), "loadavg": loadavg()}
    during["busy"] = bool(during["other_cpu_cores"] is not None and during["other_cpu_cores"] >= BUSY_OTHER_CORES)
    if during["busy"]:
        print(
            f"WARNING: other processes used {during['other_cpu_cores']:.2f} cores on average during the benchmark; "
            "figures are unreliable",
            flush=True,
        )
    return during


def run_benchmark(cfg: BenchConfig, out: Optional[Path] = None, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run every measurement of ``cfg``, write the JSON to ``out`` (atomically) and return it."""
    t_start = time.perf_counter()
    before = idle_before(cfg)
    counters = cpu_counters()
    log(f"matmul rates on {cfg.device} (n={cfg.matmul_n}, float32 and bfloat16)")
    matmul = measure_matmul(cfg)
    ratios: list[dict[str, Any]] = []
    raw: dict[str, Any] = {"train": {}, "inference": {}, "matmul": matmul}
    flops_sources: set[str] = set()
    deploy_seen = False

    for spec in cfg.models:
        log(f"training steps: {spec.name} (batch {spec.train_batch}, {spec.rounds} rounds x {spec.steps_per_round})")
        tr = measure_training(spec, cfg)
        raw["train"][spec.name] = tr
        flops_sources.update(tr["flops_source"].values())
        for v, val in tr["ratio_to_ln"].items():
            targeted = spec.name in TRAIN_TARGET_MODELS and v in TRAIN_TARGETS
            why = f"the targets are set for {', '.join(TRAIN_TARGET_MODELS)}" if v in TRAIN_TARGETS else "no target for this norm"
            ratios.append(make_ratio(f"train_step/{spec.name}/{v}", val, TRAIN_TARGETS.get(v, 1.00), informational=not targeted,
                                     note="" if targeted else f"informational: {why}"))  # fmt: skip
        log(f"inference: {spec.name} (batch {cfg.infer_batch})")
        inf = measure_inference(spec, cfg)
        raw["inference"][spec.name] = inf
        deploy_seen = deploy_seen or inf["deploy_available"]
        for v in cfg.infer_variants:
            if v == "ln":
                continue
            if inf["deploy_available"]:
                if v in inf["ratio_to_ln"]:
                    ratios.append(make_ratio(f"inference/{spec.name}/{v}", inf["ratio_to_ln"][v], INFER_TARGETS.get(v, 1.00),
                                             note="undeployed (informational)", informational=True))  # fmt: skip
                ratios.append(make_ratio(f"inference_deployed/{spec.name}/{v}", inf["ratio_to_ln"][f"{v}+deploy"],
                                         INFER_TARGETS.get(v, 1.00), note="deploy()" + ("" if v in INFER_TARGETS else ", no target for this norm"),
                                         informational=v not in INFER_TARGETS))  # fmt: skip
            else:
                ratios.append(make_ratio(f"inference/{spec.name}/{v}", inf["ratio_to_ln"][v], INFER_TARGETS.get(v, 1.00),
                                         note="deploy() not available", informational=v not in INFER_TARGETS))  # fmt: skip

        if paths_apply(cfg):
            log(f"impl=auto vs every forced path: {spec.name}")
            pa = measure_paths(spec, cfg)
            raw.setdefault("paths", {})[spec.name] = pa
            ratios += [r for r, _ in path_ratios(spec.name, pa)]

    if cfg.device == "cpu" and cfg.precision == "32-true" and not cfg.compile:
        lt_spec = cfg.lightning_model or cfg.models[0]
        log(f"lightning overhead: {lt_spec.name} ({cfg.lightning_rounds} rounds x {cfg.lightning_steps} steps)")
        lt = measure_lightning(lt_spec, cfg)
        raw["lightning"] = lt
        ratios.append(make_ratio("lightning_overhead", lt["ratio"], LIGHTNING_TARGET, note=f"{lt_spec.name}, LN"))

        dp_spec = cfg.data_model or cfg.models[0]
        log(f"data path vs {dp_spec.name} training step")
        dp = measure_data_path(dp_spec, cfg)
        raw["data_path"] = dp
        ratios.append(make_ratio("data_path", dp["ratio"], DATA_PATH_TARGET, op=">=", note=f"vs {dp_spec.name} training"))

    fv = all(s == "fvcore" for s in flops_sources)
    for spec in cfg.models:
        tr = raw["train"][spec.name]
        for v in cfg.train_variants:
            note = ("fvcore FLOPs" if fv else "estimated FLOPs (2*params*tokens)") + f", vs {tr['matmul_dtype']} matmul"
            ratios.append(make_ratio(f"throughput_vs_matmul/{spec.name}/{v}", tr["throughput_vs_matmul"][v], MATMUL_TARGET,
                                     op=">=", note=note))  # fmt: skip

    during = idle_during(counters)
    busy = bool(before["busy"] or during["busy"])
    import pytorch_lightning as pl
    result: dict[str, Any] = {
        "schema": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": cfg.mode,
        "device": cfg.device,
        "precision": cfg.precision,
        "compile": cfg.compile,
        "impl": cfg.impl or "configs (conf/norm)",
        "machine": {**machine_info(cfg.device), "matmul_gflops": matmul["gflops"], "matmul_n": matmul["n"]},
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "malloc": malloc_state(),
        "machine_busy": busy,
        "loadavg": before["loadavg"],
        "idle_check": {"before": before, "during": during, "busy_other_cores_threshold": BUSY_OTHER_CORES},
        "flops_source": "fvcore (autonorm.eval.profile.count_flops, 2 FLOPs per multiply-add)"
        if fv
        else f"estimate 2*params*tokens: {sorted(flops_sources)}",
        "flop_convention": "2 FLOPs per multiply-add (model FLOPs and matmul rates alike)",
        "deploy_available": deploy_seen,
        # which path impl=fused took: the C++ kernels (autonorm.kernels.native) or the torch-op fallback
        "native_kernels": native_status(),
        # what impl=auto chose in this run ({choice key: {"impl", "us"}}; autonorm.kernels.select)
        "auto_choices": auto_choices(),
        "ratios": {r["name"]: r for r in ratios},
        "all_pass": all(r["pass"] for r in ratios if not r["informational"]),
        "raw": raw,
        "config": asdict(cfg),
        "elapsed_s": time.perf_counter() - t_start,
        "method": {
            "interleaving": "round-robin over the compared variants (rotating start), median over rounds of per-round ratios",
            "train_step": "ClassificationTask without Lightning: forward + its loss + backward + AdamW step over its parameter "
            "groups (optim of the train config) + zero_grad, fixed random fp32 batch, eager",
            "inference": "eval(), torch.inference_mode(), forward of one batch",
            "lightning_overhead": "start-to-start interval of consecutive training steps (callback on_train_batch_start "
            "vs plain loop after fetching), warm-up steps dropped, medians",
            "data_path": "BatchLoader full pass (shuffle, crop 4, flip, normalize) images/s over LN training images/s",
            "throughput_vs_matmul": "3 x forward FLOPs x batch / step time over 2n^3 / matmul time "
            "(n x n, float32, or bfloat16 under bf16-mixed)",
            "precision": "bf16-mixed: torch.autocast(bfloat16) around forward and loss; 32-true: float32",
            "auto_vs_best": "impl=auto and each forced path (kernels: impl=fused; torch: impl=fused inside "
            "native.turned_off(); eager) of the same norm interleaved; median over rounds of auto / that round's fastest",
        },
    }
    if out is not None:
        atomic_write_json(out, result)
        result["out"] = str(out)
    return result


def print_report(result: dict[str, Any]) -> None:
    """The RATIO lines, then a table."""
    from rich.console import Console
    from rich.table import Table

    ratios = list(result["ratios"].values())
    nk = result.get("native_kernels") or {}
    m = result["machine"]
    print(f"machine: {m['cpu_model']} ({' '.join(m.get('cpu_isa', [])) or 'no listed vector ISA flags'}), "
          f"{m['cores']} cores, {result['threads']} threads" + (f", GPU {m['gpu']}" if m.get("gpu") else ""))  # fmt: skip
    mm = m.get("matmul_gflops", {})
    print(f"matmul on {result.get('device', 'cpu')} (n={m.get('matmul_n')}, 2 FLOPs per multiply-add): "
          f"float32 {mm.get('fp32', float('nan')):.0f} GFLOP/s, bfloat16 {mm.get('bf16', float('nan')):.0f} GFLOP/s")  # fmt: skip
    print(f"run: device {result.get('device', 'cpu')}, precision {result.get('precision')}, compile {result.get('compile')}, "
          f"norm impl {result.get('impl')}, OMP_WAIT_POLICY {result.get('omp_wait_policy') or 'unset'}, "
          f"malloc {'tuned' if (result.get('malloc') or {}).get('tuned') else 'default'}")  # fmt: skip
    print(f"C++ kernels: {'available' if nk.get('available') else 'not used: ' + str(nk.get('error'))}")
    chosen = result.get("auto_choices") or {}
    if chosen:
        picks = sorted({f"{k.split('|')[0]}/{k.split('|')[3]}: {v['impl']}" for k, v in chosen.items()})
        print("impl=auto chose: " + ", ".join(picks))
    for r in ratios:
        print(format_ratio_line(r), flush=True)
    rows = [
        (r["name"], f"{r['value']:.3f}", f"{r['op']} {r['target']:.2f}",
         "info" if r["informational"] else ("PASS" if r["pass"] else "FAIL"), r["note"])
        for r in ratios
    ]  # fmt: skip
    title = (f"AutoNorm benchmark ({result['mode']}) on {m.get('gpu') or m['cpu_model']}, {m['cores']} cores, "
             f"{result['threads']} threads, torch {result['torch']}"
             + (" [MACHINE BUSY: unreliable]" if result["machine_busy"] else ""))  # fmt: skip
    table = Table(title=title)
    for col in ("figure", "value", "target", "result", "note"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)
    raw = result["raw"]
    for name, tr in raw["train"].items():
        steps = ", ".join(f"{v} {t * 1000:.1f}" for v, t in tr["median_step_s"].items())
        print(f"{name} train step ms (batch {tr['batch']}): {steps}; interleaved {tr.get('matmul_dtype', 'float32')} matmul "
              f"{tr['matmul_gflops']:.1f} GFLOP/s")  # fmt: skip
    for name, inf in raw["inference"].items():
        fw = ", ".join(f"{v} {t * 1000:.1f}" for v, t in inf["median_forward_s"].items())
        print(f"{name} inference ms (batch {inf['batch']}): {fw}")
    if "lightning" in raw:
        lt, dp = raw["lightning"], raw["data_path"]
        print(f"lightning step ms: {lt['median_step_s']['lightning'] * 1000:.1f} vs plain {lt['median_step_s']['plain'] * 1000:.1f}")
        print(f"data path: loader {dp['loader_images_per_s']:.0f} img/s vs training {dp['train_images_per_s']:.0f} img/s")
    if "out" in result:
        print(f"wrote {result['out']}")


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; returns the exit code (0 even when targets are missed)."""
    parser = argparse.ArgumentParser(description="AutoNorm performance benchmark (interleaved; CPU float32 eager modules by default).")
    parser.add_argument("--quick", action="store_true", help="vit_micro only, fewer repetitions (< 2 min on 2 cores)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--models", default=None, help="comma-separated conf/model names (default vit_micro,vit_tiny)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (cuda: the first GPU)")
    parser.add_argument("--precision", default="32-true", choices=list(PRECISIONS), help="bf16-mixed: torch.autocast to bfloat16")
    parser.add_argument("--compile", action="store_true", help="wrap every model in torch.compile (compiled during warm-up)")
    parser.add_argument("--impl", default=None, choices=["auto", "fused", "eager", "compiled"], help="force one norm implementation")
    parser.add_argument("--bf16-speedup", action="store_true", help="only figure 6: each norm's training step in float32 vs bf16-mixed (with --compile: also both compiled), interleaved")
    parser.add_argument("--paths", action="store_true", help="only figure 7: impl=auto vs every forced path (kernels, torch ops, eager), interleaved")
    parser.add_argument("--malloc", action="store_true",
                        help="only figure 8: training steps with glibc malloc at its defaults vs tuned (autonorm.runtime), alternating processes")
    parser.add_argument("--malloc-probe", default=None, help=argparse.SUPPRESS)  # one process of --malloc: SETTING:MODEL:STEPS
    parser.add_argument("--omp-default", action="store_true",
                        help="leave OMP_WAIT_POLICY to OpenMP's default instead of passive (read before torch loads)")
    parser.add_argument("--variants", default=None, help=f"comma-separated norm variants (default: {','.join(TRAIN_VARIANTS)}; also derf; ln is always run)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda, but torch sees no CUDA GPU", file=sys.stderr)
        return 2

    torch.set_num_threads(usable_cores())
    tune_malloc()  # as training does (autonorm.runtime; AUTONORM_MALLOC=default leaves malloc as it is)
    if args.malloc_probe:
        return malloc_probe(args.malloc_probe, args.variants)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    cfg = default_config(quick=args.quick, models=models)
    cfg.device, cfg.precision, cfg.compile, cfg.impl = args.device, args.precision, args.compile, args.impl
    if args.variants:
        wanted = {"ln", *(v.strip() for v in args.variants.split(",") if v.strip())}
        unknown = wanted - set(VARIANTS)
        if unknown:
            print(f"bench: unknown --variants {sorted(unknown)}; known: {sorted(VARIANTS)}", file=sys.stderr)
            return 2
        cfg.train_variants = tuple(v for v in VARIANTS if v in wanted and (v in TRAIN_VARIANTS or v in OPT_IN_VARIANTS))
        cfg.infer_variants = tuple(v for v in VARIANTS if v in wanted and (v in INFER_VARIANTS or v in OPT_IN_VARIANTS))
    if args.bf16_speedup:
        return bf16_speedup_report(cfg, Path(args.out))
    if args.malloc:
        return malloc_report(cfg, Path(args.out), args.variants)
    if args.paths:
        if not paths_apply(cfg):
            print("bench: --paths compares impl=auto with the forced paths on CPU float32 eager modules "
                  "(no --impl, --device cuda, --precision or --compile)", file=sys.stderr)  # fmt: skip
            return 2
        return paths_report(cfg, Path(args.out))
    result = run_benchmark(cfg, Path(args.out))
    print_report(result)
    return 0


def bf16_speedup_report(cfg: BenchConfig, out: Path) -> int:
    """``--bf16-speedup``: figure 6 for every model of ``cfg``, printed with the machine and
    written to ``out`` (JSON)."""
    before = idle_before(cfg)
    result: dict[str, Any] = {"machine": machine_info(cfg.device), "malloc": malloc_state(), "matmul": measure_matmul(cfg), "bf16_speedup": {},
                              "machine_busy_before": before["busy"]}
    print(f"machine: {result['machine'].get('cpu_model')} ({' '.join(result['machine']['cpu_isa'])}); matmul fp32 {result['matmul']['gflops']['fp32']:.0f}, "
          f"bf16 {result['matmul']['gflops']['bf16']:.0f} GFLOP/s", flush=True)  # fmt: skip
    for spec in cfg.models:
        _log(f"float32 vs bf16-mixed training steps: {spec.name} (batch {spec.train_batch}, {spec.rounds} rounds)")
        res = measure_bf16_speedup(spec, cfg)
        result["bf16_speedup"][spec.name] = res
        for setting, per_variant in res["speedup"].items():
            for v, s in per_variant.items():
                print(f"RATIO speedup/{spec.name}/{setting}/{v} {s:.3f} (float32 eager step / {setting} step; informational)", flush=True)
    after = check_idle(cfg.idle_sample_s)
    result["machine_busy_after"] = after["busy"]
    atomic_write_json(out, result)
    print(f"written: {out}", flush=True)
    return 0


MALLOC_SETTINGS = ("default", "tuned")


def malloc_probe(spec_arg: str, variants: Optional[str]) -> int:
    """One process of ``--malloc``: ``SETTING:MODEL:STEPS``; prints one JSON line (median step
    seconds per variant, minor page faults per step, peak resident MB, the malloc state)."""
    import json
    import resource

    setting, model, steps = spec_arg.split(":")
    spec = model_spec(model)
    cfg = default_config(models=[model])
    wanted = ["ln", *(v.strip() for v in (variants or "autonorm_soft").split(",") if v.strip() and v.strip() != "ln")]
    x, y = _batch(spec.train_batch, cfg.img_size, cfg.num_classes)
    fns = {v: _train_step_fn(build_task(spec, v, cfg), x, y) for v in wanted}
    for fn in fns.values():
        for _ in range(2):
            fn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = round_robin(fns, int(steps), 1, warmup=0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"setting": setting, "model": model, "malloc": malloc_state(),
                      "median_step_s": {v: all_median(times[v]) for v in wanted},
                      "minor_faults_per_step": faults / (int(steps) * len(wanted)),
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)  # fmt: skip
    return 0


def run_malloc_probe(setting: str, model: str, steps: int, variants: Optional[str]) -> dict[str, Any]:
    """:func:`malloc_probe` in a fresh process with malloc ``setting`` ("default" or "tuned")."""
    import json
    import subprocess

    env = {**os.environ, "AUTONORM_MALLOC": "default" if setting == "default" else ""}
    cmd = [sys.executable, __file__, "--malloc-probe", f"{setting}:{model}:{steps}"] + (["--variants", variants] if variants else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"the {setting} process failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def malloc_report(cfg: BenchConfig, out: Path, variants: Optional[str] = None, rounds: int = 3) -> int:
    """``--malloc``: figure 8 for every model of ``cfg`` (``rounds`` pairs of fresh processes,
    the settings' order alternating)."""
    before = idle_before(cfg)
    counters = cpu_counters()
    result: dict[str, Any] = {"machine": machine_info(cfg.device), "threads": torch.get_num_threads(), "malloc": {}, "ratios": {}}
    print(f"machine: {result['machine'].get('cpu_model')} ({' '.join(result['machine']['cpu_isa'])}), {result['threads']} threads", flush=True)
    for spec in cfg.models:
        steps = max(3, spec.rounds)
        _log(f"malloc default vs tuned: {spec.name} (batch {spec.train_batch}, {rounds} rounds of two processes, {steps} steps each)")
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in MALLOC_SETTINGS}
        for r in range(rounds):
            for setting in (MALLOC_SETTINGS if r % 2 == 0 else MALLOC_SETTINGS[::-1]):
                try:
                    runs[setting].append(run_malloc_probe(setting, spec.name, steps, variants))
                except RuntimeError as exc:
                    print(f"bench --malloc: {exc}", file=sys.stderr)
                    return 1
        res = {"rounds": rounds, "steps": steps, "runs": runs, "speedup": {}}
        for v in runs["default"][0]["median_step_s"]:
            per_round = [d["median_step_s"][v] / t["median_step_s"][v] for d, t in zip(runs["default"], runs["tuned"])]
            res["speedup"][v] = median(per_round)
            r_ = make_ratio(f"malloc_speedup/{spec.name}/{v}", res["speedup"][v], 1.0, ">=", informational=True,
                            note=f"default / tuned step; faults per step {median([d['minor_faults_per_step'] for d in runs['default']]):.0f} "
                                 f"vs {median([t['minor_faults_per_step'] for t in runs['tuned']]):.0f}")  # fmt: skip
            result["ratios"][r_["name"]] = r_
            print(f"{format_ratio_line(r_)}  [{r_['note']}]", flush=True)
        result["malloc"][spec.name] = res
    result["machine_busy"] = bool(before["busy"] or idle_during(counters)["busy"])
    atomic_write_json(out, result)
    print(f"written: {out}", flush=True)
    return 0


def paths_report(cfg: BenchConfig, out: Path) -> int:
    """``--paths``: figure 7 for every model of ``cfg``, printed with the machine and written to
    ``out`` (JSON)."""
    before = idle_before(cfg)
    counters = cpu_counters()
    result: dict[str, Any] = {"machine": machine_info(cfg.device), "malloc": malloc_state(), "threads": torch.get_num_threads(), "native_kernels": native_status(),
                              "paths": {}, "ratios": {}}  # fmt: skip
    print(f"machine: {result['machine'].get('cpu_model')} ({' '.join(result['machine']['cpu_isa'])}), {result['threads']} threads; "
          f"C++ kernels: {'available' if result['native_kernels']['available'] else 'not used'}", flush=True)  # fmt: skip
    for spec in cfg.models:
        _log(f"impl=auto vs every forced path: {spec.name} (batch {spec.train_batch} training, {cfg.infer_batch} deployed inference)")
        pa = measure_paths(spec, cfg)
        result["paths"][spec.name] = pa
        for r, res in path_ratios(spec.name, pa):
            result["ratios"][r["name"]] = r
            others = ", ".join(f"{p} {x:.2f}" for p, x in res["ratio_to_auto"].items())
            print(f"{format_ratio_line(r)}  [forced path / auto: {others}]", flush=True)
    result["auto_choices"] = auto_choices()
    result["machine_busy"] = bool(before["busy"] or idle_during(counters)["busy"])
    atomic_write_json(out, result)
    print(f"written: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
