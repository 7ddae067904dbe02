"""Inference deployment: a copy of a model in eval mode with every registered norm replaced by
its inference form, as the norm's registry entry declares it (``deploy=`` of
:func:`~autonorm.norms.registry.register_norm`, or :func:`~autonorm.norms.registry.set_deploy`).

The fast inference forms of DyT, AutoNorm and AFN (precomputed constants, one fused blend, a
per-sample dispatch for hard gates, AFN folded into an affine map) live with the other speed
paths in :mod:`autonorm.kernels.deploy`, which declares them when it is imported (``import
autonorm`` does). A registered norm without a declared form (LayerNorm, Derf) stays as it is:
its eval forward.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

from torch import nn

from .registry import spec_of


def deploy_module(module: nn.Module) -> Optional[nn.Module]:
    """The inference replacement of one norm module (its registered ``deploy``), or None when it
    stays as it is."""
    spec = spec_of(module)
    if spec is None or spec.deploy is None:
        return None
    return spec.deploy(module)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _replace_norms(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Replace every norm inside ``model`` in place (top-down); returns the per-point info."""
    info: dict[str, dict[str, Any]] = {}
    outer: list[str] = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(prefix + ".") for prefix in outer):
            continue  # inside a norm (an AutoNorm's branches): the outer norm decides
        if spec_of(module) is not None:
            outer.append(name)
        new = deploy_module(module)
        if new is None or new is module:
            continue
        if not name:
            raise TypeError("deploy the model that contains the norm, not the norm itself (use deploy_module)")
        _set_submodule(model, name, new)
        info[name] = {"from": type(module).__name__, "to": type(new).__name__}
    return info


def deploy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every norm replaced by its inference form.

    Args:
        model: any module containing registered norms (left untouched).

    Returns:
        The deployed copy, with ``deploy_info`` ``{norm name: {"from", "to"}}`` for every
        replaced norm.
    """
    deployed = copy.deepcopy(model).eval()
    deployed.requires_grad_(False)
    info = _replace_norms(deployed)
    deployed.eval()
    deployed.deploy_info = info  # type: ignore[assignment]
    return deployed


__all__ = ["deploy_model", "deploy_module"]
