"""How a norm computation is carried out: the ``impl`` names, the table of fast paths, and the
one switch that makes every norm compute its eager formula.

The norms of this package hold the eager formulas (the specification). Their faster
implementations live in :mod:`autonorm.kernels`, which fills the table below when it is imported
(``import autonorm`` does, so every user of the package gets them). A norm asks the table at each
call::

    fast = fast_path("dyt", self.impl)
    return fast(x, ...) if fast is not None else dynamic_tanh(x, ...)

``impl`` (every norm with an ``impl`` argument: DyT, AutoNorm, AFN):

* ``"eager"``: the formula of the norm's module, plain PyTorch ops;
* ``"fused"``: hand-fused kernels (C++ on float32 CPU input, custom autograd Functions elsewhere);
* ``"compiled"``: the eager formula through :func:`torch.compile`;
* ``"auto"`` (:data:`DEFAULT_IMPL`): the fastest of the others, measured once per machine.

All compute the same function up to float rounding (tested). An op with no path for an ``impl``
(e.g. AFN's statistics under ``compiled``, or a norm without fast paths) computes its eager
formula. When no fast path is registered at all (:mod:`autonorm.kernels` not imported), every ``impl`` computes the eager
formula, after one :class:`RuntimeWarning`.

Inside :func:`eager_formulas` every norm computes its eager formula whatever its ``impl`` (what
the FLOP counter traces: the model's arithmetic, not an implementation's). This module imports
torch only.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Callable, Iterator, Optional

if TYPE_CHECKING:
    import torch

IMPLS: tuple[str, ...] = ("auto", "eager", "compiled", "fused")
#: The ``impl`` of every norm unless told otherwise (the configs in ``conf/norm`` use it too).
DEFAULT_IMPL = "auto"

#: ``{op: {impl: function}}``, filled by :mod:`autonorm.kernels` (:func:`register_fast_path`).
FAST_PATHS: dict[str, dict[str, Callable]] = {}
_state = {"eager": 0, "warned": False}


def check_impl(impl: str) -> str:
    """Validate an ``impl`` name (``auto``, ``eager``, ``compiled`` or ``fused``) and return it."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got impl={impl!r}")
    return impl


def register_fast_path(op: str, **routes: Callable) -> None:
    """Declare the functions that compute ``op`` for each ``impl`` (keyword = impl name); they
    take the arguments of the op's eager formula (see the norm that asks for ``op``)."""
    unknown = set(routes) - set(IMPLS) | ({"eager"} & set(routes))
    if unknown:
        raise ValueError(f"fast paths are for impl in {[i for i in IMPLS if i != 'eager']}, got {sorted(unknown)}")
    FAST_PATHS[op] = dict(routes)


def fast_path(op: str, impl: str) -> Optional[Callable]:
    """The function computing ``op`` under ``impl``, or None: compute the eager formula
    (``impl="eager"``, inside :func:`eager_formulas`, or no path for this ``impl``)."""
    if impl == "eager" or _state["eager"]:
        return None
    if not FAST_PATHS:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(
                f"no fast path is registered (autonorm.kernels is not imported): impl={impl!r} and every "
                "other impl compute the eager formulas",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    return FAST_PATHS.get(op, {}).get(impl)


def set_impl(model: "torch.nn.Module", impl: str) -> int:
    """Set ``impl`` on every norm inside ``model`` (``model`` included; deployed forms too) and
    return how many; e.g. ``set_impl(model, "eager")`` to read or debug a model's arithmetic."""
    check_impl(impl)
    norms = [m for m in model.modules() if isinstance(getattr(m, "impl", None), str) and m.impl in IMPLS]
    for m in norms:
        m.impl = impl
    return len(norms)


@contextlib.contextmanager
def eager_formulas() -> Iterator[None]:
    """Inside the block every norm computes its eager formula, whatever its ``impl``."""
    _state["eager"] += 1
    try:
        yield
    finally:
        _state["eager"] -= 1


__all__ = ["DEFAULT_IMPL", "FAST_PATHS", "IMPLS", "check_impl", "eager_formulas", "fast_path", "register_fast_path", "set_impl"]
