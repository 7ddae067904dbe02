"""Normalization layers for Vision Transformers: LayerNorm, DyT, AutoNorm (gated LN/DyT), AFN.

Every layer maps tokens (B, N, C) to the same shape; build one with ``NORMS[name](dim, **kw)``.
DyT, AutoNorm and AFN take ``impl="auto"|"eager"|"fused"|"compiled"`` (:mod:`.fused`); ``deploy_model``
(:mod:`.deploy`) turns a model into its fastest exact inference form.
This package imports torch only.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .afn import AFN
from .autonorm import FREEZE_BRANCHES, GATES, AutoNorm
from .deploy import deploy_model
from .dyt import DyT
from .fused import IMPLS
from .gates import GumbelGate, SoftGate
from .ln import LayerNorm
from .schedules import SCHEDULES, temperature_at

NORMS: dict[str, type[nn.Module]] = {"ln": LayerNorm, "dyt": DyT, "autonorm": AutoNorm, "afn": AFN}

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


def _scalar(v: Union[torch.Tensor, float]) -> float:
    return float(v.detach().float().mean().item()) if isinstance(v, torch.Tensor) else float(v)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if name else prefix


def norm_state(model: nn.Module) -> dict[str, float]:
    """Flat dict of per-norm-point scalars for logging, keyed by module name.

    * ``gate/<name>``: mean of the AutoNorm's ``last_gate`` (absent before its first forward);
    * ``alpha/<name>``: DyT's alpha (an AutoNorm's inner DyT is reported under the AutoNorm's name);
    * ``lambda_mu|lambda_sigma|lambda_gamma|lambda_beta/<name>``: AFN's effective lambdas;
    * ``tau``: once, the temperature of the first gate, if the model has any gate.

    The root module's keys carry no ``/<name>`` suffix.
    """
    state: dict[str, float] = {}
    autonorm_names = {name for name, m in model.named_modules() if isinstance(m, AutoNorm)}
    tau = None
    for name, m in model.named_modules():
        if isinstance(m, AutoNorm):
            if m.last_gate is not None and m.last_gate.numel() > 0:
                state[_key("gate", name)] = _scalar(m.last_gate)
            state[_key("alpha", name)] = _scalar(m.dyt.alpha)
        elif isinstance(m, DyT):
            parent = name.rpartition(".")[0] if "." in name else ""
            if name and name.rpartition(".")[2] == "dyt" and parent in autonorm_names:
                continue  # already reported under the AutoNorm's name
            state[_key("alpha", name)] = _scalar(m.alpha)
        elif isinstance(m, AFN):
            for lam in ("lambda_mu", "lambda_sigma", "lambda_gamma", "lambda_beta"):
                state[_key(lam, name)] = _scalar(getattr(m, lam))
        elif isinstance(m, _GATE_TYPES) and tau is None:
            tau = _scalar(m.tau)
    if tau is not None:
        state["tau"] = tau
    return state


__all__ = [
    "AFN",
    "AutoNorm",
    "DyT",
    "FREEZE_BRANCHES",
    "GATES",
    "GumbelGate",
    "IMPLS",
    "LayerNorm",
    "NORMS",
    "SCHEDULES",
    "SoftGate",
    "deploy_model",
    "gate_modules",
    "norm_state",
    "set_temperature",
    "temperature_at",
]
