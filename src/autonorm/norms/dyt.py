"""Dynamic Tanh (DyT), a normalization-free replacement for LayerNorm."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .fused import DEFAULT_IMPL, call_compiled, check_impl, dyt_auto, dyt_fused, dyt_reference
from .layer_args import channel_affine, check_eps, place
from .registry import register_norm


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

    ``impl`` selects how the same function is computed (see :mod:`autonorm.norms.fused`):
    ``"eager"`` (this formula, the reference), ``"fused"`` (the default, as in ``conf/norm``: custom
    autograd Function through ``tanh(z) = 2 sigmoid(2z) - 1``, equal up to float rounding) or ``"compiled"``
    (``torch.compile`` of this formula, lazily on the first call, eager fallback on failure).
    """

    impl: str = "eager"

    def __init__(
        self,
        dim: int,
        alpha_init: float = 0.5,
        impl: str = DEFAULT_IMPL,
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_eps(eps)  # accepted as a drop-in for a norm layer; DyT has no statistics to guard
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got dim={dim!r}")
        if not float(alpha_init) > 0:
            raise ValueError(f"alpha_init must be > 0, got alpha_init={alpha_init!r}")
        self.dim = int(dim)
        self.alpha_init = float(alpha_init)
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init))
        channel_affine(self, self.dim, elementwise_affine, bias)
        self.impl = check_impl(impl)
        place(self, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * tanh(alpha * x) + bias`` to ``x`` (..., dim)."""
        if self.impl == "auto":
            return dyt_auto(x, self.alpha, self.weight, self.bias)
        if self.impl == "fused":
            return dyt_fused(x, self.alpha, self.weight, self.bias)
        if self.impl == "compiled":
            return call_compiled(dyt_reference, x, self.alpha, self.weight, self.bias)
        return self.weight * torch.tanh(self.alpha * x) + self.bias

    def extra_repr(self) -> str:
        impl = "" if self.impl == "eager" else f", impl={self.impl!r}"
        return f"{self.dim}, alpha_init={self.alpha_init}{impl}"
