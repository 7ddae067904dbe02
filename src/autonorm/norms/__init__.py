"""Normalization layers for Vision Transformers: LayerNorm, DyT, Derf, AutoNorm (gated LN/DyT or
LN/Derf), AFN.

Every layer maps tokens (B, N, C) to the same shape, and takes the keyword arguments of a norm
layer (:mod:`.layer_args`); build one with ``NORMS[name](dim, **kw)``.
Each norm's module holds its eager formula (the specification). DyT, AutoNorm and AFN take
``impl="auto"|"eager"|"fused"|"compiled"`` (:mod:`.impl`): their faster paths live in
:mod:`autonorm.kernels`, which registers them here when imported (``import autonorm`` does);
``eager_formulas()`` makes every norm compute its eager formula. ``deploy_model`` (:mod:`.deploy`)
turns a model into its fastest exact inference form (the forms declared in the registry).

Every module of this package is imported here, so a norm registered in its own module
(:func:`~.registry.register_norm`) is known to the project and importable from
``autonorm.norms`` without further edits. This package imports torch only.
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from .afn import AFN
from .autonorm import FREEZE_BRANCHES, GATES, AutoNorm
from .deploy import deploy_model
from .dyt import DyT
from .impl import DEFAULT_IMPL, IMPLS, eager_formulas, set_impl
from .gates import GumbelGate, SoftGate
from .ln import LayerNorm
from .registry import NORM_REGISTRY, NORMS, NormSpec, get_norm, is_norm, norm_names, register_norm, spec_of
from .schedules import SCHEDULES, temperature_at

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
#: every registered norm class, importable from here (``from autonorm.norms import DyT``)
_REGISTERED = {spec.cls.__name__: spec.cls for spec in NORM_REGISTRY.values()}
globals().update(_REGISTERED)

_GATE_TYPES = (SoftGate, GumbelGate)


def gate_modules(model: nn.Module) -> list[nn.Module]:
    """Every gate module (SoftGate / GumbelGate) inside ``model`` (``model`` included)."""
    return [m for m in model.modules() if isinstance(m, _GATE_TYPES)]


def set_temperature(model: nn.Module, tau: float) -> int:
    """Set the temperature ``tau`` (> 0) of every gate inside ``model``; returns how many."""
    if not float(tau) > 0:
        raise ValueError(f"tau must be > 0, got tau={tau!r}")
    gates = gate_modules(model)
    for g in gates:
        g.set_tau(float(tau))
    return len(gates)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if name else prefix


def norm_state(model: nn.Module) -> dict[str, float]:
    """Flat dict of per-norm-point scalars for logging, keyed by module name.

    Every registered norm reports the scalars it declares (``logs=`` of
    :func:`~autonorm.norms.registry.register_norm`) as ``<key>/<name>``: DyT's ``alpha``, the
    AutoNorm's ``gate`` (mean of ``last_gate``, absent before the first forward) and its inner
    DyT's ``alpha``, AFN's effective lambdas, ... A norm nested inside another norm (AutoNorm's
    branches) is reported by the outer norm only. ``tau``: once, the temperature of the first
    gate, if the model has any gate. The root module's keys carry no ``/<name>`` suffix.
    """
    state: dict[str, float] = {}
    inside: list[str] = []  # names of the norms met so far (named_modules is top-down)
    tau = None
    for name, m in model.named_modules():
        spec = spec_of(m)
        if spec is not None:
            if any(name.startswith(outer + ".") or outer == "" for outer in inside):
                continue  # reported by the norm that contains it
            inside.append(name)
            for key, value in spec.scalars(m).items():
                state[_key(key, name)] = value
        elif isinstance(m, _GATE_TYPES) and tau is None:
            tau = float(m.tau)
    if tau is not None:
        state["tau"] = tau
    return state


__all__ = [
    "AFN",
    "AutoNorm",
    "DEFAULT_IMPL",
    "DyT",
    "FREEZE_BRANCHES",
    "GATES",
    "GumbelGate",
    "IMPLS",
    "LayerNorm",
    "NORMS",
    "NORM_REGISTRY",
    "NormSpec",
    "SCHEDULES",
    "SoftGate",
    "deploy_model",
    "eager_formulas",
    "gate_modules",
    "get_norm",
    "is_norm",
    "norm_names",
    "norm_state",
    "register_norm",
    "set_impl",
    "set_temperature",
    "spec_of",
    "temperature_at",
]
__all__ += sorted(set(_REGISTERED) - set(__all__))
