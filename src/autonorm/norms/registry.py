"""The norm registry: every norm class registers itself with its name and what the project needs
to know about it, in the style of timm's ``register_model``.

A norm module declares, next to its class::

    @register_norm("dyt", display="DyT", logs={"alpha": "alpha"})
    class DyT(nn.Module): ...

* ``name``: the config name (``norm.name`` and ``conf/norm/<name>.yaml``);
* ``display``: the name of the norm in a table row (``method_name``), or a function of the norm's
  config that returns it (AutoNorm names its gate: ``AutoNorm-soft``);
* ``logs``: the scalars logged per norm point during training, ``{key: attribute path}`` or
  ``{key: function of the module}``; the path is read on the module (dots go into submodules)
  and reported as ``key/<module name>`` (the mean of a tensor; skipped while the value is None,
  empty or absent, e.g. ``last_gate`` before the first forward);
* ``deploy`` (optional): ``module -> inference module`` (or None to keep it), used by
  :func:`autonorm.norms.deploy.deploy_model`; without it the norm is deployed as it is.

Everything else reads this table: the config validation (accepted names), the table row names
(``method_name``), the norm logging (``norm_state``) and deployment (``deploy_model``). This
module imports torch only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar, Union

import torch
from torch import nn

Display = Union[str, Callable[[Mapping[str, Any]], str]]
Logged = Union[str, Callable[[nn.Module], Any]]
Deploy = Callable[[nn.Module], Optional[nn.Module]]
N = TypeVar("N", bound=type)


@dataclass
class NormSpec:
    """What the project knows about one registered norm (see the module docstring)."""

    name: str
    cls: type
    display: Display
    logs: dict[str, Logged] = field(default_factory=dict)
    deploy: Optional[Deploy] = None

    def display_name(self, norm_cfg: Optional[Mapping[str, Any]] = None) -> str:
        """The table name of this norm under the config ``norm_cfg`` (the ``norm`` group)."""
        return self.display if isinstance(self.display, str) else self.display(dict(norm_cfg or {}))

    def scalars(self, module: nn.Module) -> dict[str, float]:
        """``{key: value}`` of the logged scalars of ``module`` that exist now."""
        out: dict[str, float] = {}
        for key, path in self.logs.items():
            value: Any = module
            if callable(path):
                value = path(module)
            else:
                for attr in path.split("."):
                    value = getattr(value, attr, None)
            if isinstance(value, torch.Tensor):
                if value.numel() == 0:
                    continue
                out[key] = float(value.detach().float().mean().item())
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = float(value)
        return out


NORM_REGISTRY: dict[str, NormSpec] = {}


class _Classes(Mapping[str, type]):
    """Read-only live view ``{name: norm class}`` of the registry."""

    def __getitem__(self, name: str) -> type:
        return NORM_REGISTRY[name].cls

    def __iter__(self) -> Iterator[str]:
        return iter(NORM_REGISTRY)

    def __len__(self) -> int:
        return len(NORM_REGISTRY)

    def __repr__(self) -> str:
        return repr({name: spec.cls.__name__ for name, spec in NORM_REGISTRY.items()})


#: ``NORMS[name](dim, **kwargs)`` builds a registered norm (a live view of the registry).
NORMS: Mapping[str, type] = _Classes()


def register_norm(
    name: str,
    display: Display,
    logs: Optional[Mapping[str, Logged]] = None,
    deploy: Optional[Deploy] = None,
) -> Callable[[N], N]:
    """Class decorator: register a norm under ``name`` (see the module docstring)."""

    def wrap(cls: N) -> N:
        if name in NORM_REGISTRY and NORM_REGISTRY[name].cls is not cls:
            raise ValueError(f"a norm named {name!r} is already registered ({NORM_REGISTRY[name].cls.__name__})")
        NORM_REGISTRY[name] = NormSpec(name, cls, display, dict(logs or {}), deploy)
        return cls

    return wrap


def set_deploy(cls: type, deploy: Deploy) -> None:
    """Declare how the registered norm class ``cls`` deploys (for a deployed form defined in a
    module that imports the norm, as :mod:`autonorm.kernels.deploy` does)."""
    spec = spec_of(cls)
    if spec is None:
        raise ValueError(f"{cls.__name__} is not a registered norm")
    spec.deploy = deploy


def norm_names() -> tuple[str, ...]:
    """The registered norm names, sorted."""
    return tuple(sorted(NORM_REGISTRY))


def get_norm(name: str) -> NormSpec:
    """The spec registered under ``name``; a ValueError listing the names otherwise."""
    try:
        return NORM_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; registered: {', '.join(NORM_REGISTRY)}") from None


def spec_of(module_or_cls: Union[nn.Module, type]) -> Optional[NormSpec]:
    """The spec of a norm module (or class), or None for a module that is not a registered norm."""
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    by_class = {spec.cls: spec for spec in NORM_REGISTRY.values()}
    for c in cls.__mro__:  # a subclass of a registered norm is that norm
        if c in by_class:
            return by_class[c]
    return None


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a registered norm or a :class:`torch.nn.LayerNorm`."""
    return spec_of(module) is not None or isinstance(module, nn.LayerNorm)


__all__ = [
    "NORMS",
    "NORM_REGISTRY",
    "NormSpec",
    "get_norm",
    "is_norm",
    "norm_names",
    "register_norm",
    "set_deploy",
    "spec_of",
]
