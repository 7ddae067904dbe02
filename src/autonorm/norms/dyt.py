"""Dynamic Tanh (DyT), a normalization-free replacement for LayerNorm."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .impl import DEFAULT_IMPL, check_impl, fast_path
from .layer_args import channel_affine, check_dim, check_eps, place
from .registry import register_norm


def dynamic_tanh(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The DyT formula ``weight * tanh(alpha * x) + bias`` (the eager path and the reference of
    every fast path)."""
    return weight * torch.tanh(alpha * x) + bias


@register_norm("dyt", display="DyT", logs={"alpha": "alpha"})
class DyT(nn.Module):
    """Dynamic Tanh from Zhu, Chen, He, LeCun, Liu (2025), "Transformers without Normalization".

    ``y = weight * tanh(alpha * x) + bias``

    * ``alpha``: learnable scalar, parameter of shape (1,), initialised to ``alpha_init`` (> 0).
    * ``weight``: (dim,) ones; ``bias``: (dim,) zeros (per-channel affine, as in LayerNorm).

    Element-wise: no statistics are computed, so the output of a token does not depend on
    other tokens, channels or samples. Works for any input shape whose last dimension is ``dim``.

    Takes the keyword arguments of a norm layer (:mod:`.layer_args`): ``eps`` is accepted and
    unused; ``elementwise_affine=False`` / ``bias=False`` make ``weight`` / ``bias`` constants.

    ``alpha_param`` (how ``alpha`` is stored): ``"direct"`` (the paper's: ``alpha`` is the
    parameter itself and may pass through zero, where DyT becomes the linear map
    ``weight * alpha * x + bias``) or ``"positive"`` (``alpha = softplus(raw)`` through
    :func:`torch.nn.utils.parametrize.register_parametrization`, so ``alpha > 0`` always; ``raw``
    starts at ``softplus^-1(alpha_init)``, ``self.alpha`` is the effective value either way and
    the checkpoint key becomes ``parametrizations.alpha.original``). The effective slope at 0 is
    ``alpha * weight`` per channel (logged as ``slope/<name>``).

    ``impl`` selects how the same function is computed (:mod:`.impl`; the fast paths are
    :mod:`autonorm.kernels`' op ``"dyt"``): ``"eager"`` (:func:`dynamic_tanh`, the reference),
    ``"fused"`` (C++ kernels or a custom autograd Function through ``tanh(z) = 2 sigmoid(2z) - 1``,
    equal up to float rounding), ``"compiled"`` (``torch.compile`` of :func:`dynamic_tanh`) or
    ``"auto"`` (the default: the fastest of these, measured).
    """

    impl: str = "eager"

    def __init__(
        self,
        dim: int,
        alpha_init: float = 0.5,
        impl: str = DEFAULT_IMPL,
        alpha_param: str = "direct",
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_eps(eps)  # accepted as a drop-in for a norm layer; DyT has no statistics to guard
        if not float(alpha_init) > 0:
            raise ValueError(f"alpha_init must be > 0, got alpha_init={alpha_init!r}")
        self.dim = check_dim(dim)
        self.alpha_init = float(alpha_init)
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init))
        channel_affine(self, self.dim, elementwise_affine, bias)
        self.impl = check_impl(impl)
        if alpha_param not in ALPHA_PARAMS:
            raise ValueError(f"alpha_param must be one of {list(ALPHA_PARAMS)}, got alpha_param={alpha_param!r}")
        self.alpha_param = alpha_param
        if alpha_param == "positive":
            parametrize.register_parametrization(self, "alpha", _Softplus())
        place(self, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * tanh(alpha * x) + bias`` to ``x`` (..., dim)."""
        fast = fast_path("dyt", self.impl)
        return (fast or dynamic_tanh)(x, self.alpha, self.weight, self.bias)

    def extra_repr(self) -> str:
        impl = "" if self.impl == "eager" else f", impl={self.impl!r}"
        param = "" if self.alpha_param == "direct" else f", alpha_param={self.alpha_param!r}"
        return f"{self.dim}, alpha_init={self.alpha_init}{param}{impl}"


ALPHA_PARAMS: tuple[str, ...] = ("direct", "positive")


class _Softplus(nn.Module):
    """``alpha = softplus(raw)``; ``right_inverse`` maps an initial ``alpha > 0`` to its ``raw``."""

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return F.softplus(raw)

    def right_inverse(self, alpha: torch.Tensor) -> torch.Tensor:
        return alpha + torch.log(-torch.expm1(-alpha))
