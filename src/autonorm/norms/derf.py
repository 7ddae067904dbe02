"""Dynamic erf (Derf), a normalization-free replacement for LayerNorm."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .layer_args import channel_affine, check_dim, check_eps, place
from .registry import register_norm


@register_norm("derf", display="Derf", logs={"alpha": "alpha", "shift": "shift"})
class Derf(nn.Module):
    """Dynamic erf from Chen, Lu, Zhu, Sun, Liu (2025), "Stronger Normalization-Free
    Transformers" (arXiv 2512.10938).

    ``y = weight * erf(alpha * x + shift) + bias``

    * ``alpha``: learnable scalar, parameter of shape (1,), initialised to ``alpha_init`` (0.5, > 0);
    * ``shift``: learnable scalar (the paper's ``s``), shape (1,), initialised to ``shift_init`` (0);
    * ``weight``: (dim,) ones; ``bias``: (dim,) zeros (per-channel affine, as in LayerNorm).

    Like DyT (whose ``tanh`` it replaces by the Gaussian error function ``erf``, a steeper
    S-curve, and to which it adds the learnable shift), it is element-wise: no statistics, any
    input shape whose last dimension is ``dim``. Takes the keyword arguments of a norm layer
    (:mod:`.layer_args`): ``eps`` is accepted and unused; ``elementwise_affine=False`` /
    ``bias=False`` make ``weight`` / ``bias`` constants. One implementation, this formula.
    """

    def __init__(
        self,
        dim: int,
        alpha_init: float = 0.5,
        shift_init: float = 0.0,
        eps: Optional[float] = None,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        check_eps(eps)  # accepted as a drop-in for a norm layer; Derf has no statistics to guard
        if not float(alpha_init) > 0:
            raise ValueError(f"alpha_init must be > 0, got alpha_init={alpha_init!r}")
        if not math.isfinite(float(shift_init)):
            raise ValueError(f"shift_init must be a finite float, got shift_init={shift_init!r}")
        self.dim = check_dim(dim)
        self.alpha_init, self.shift_init = float(alpha_init), float(shift_init)
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init))
        self.shift = nn.Parameter(torch.full((1,), self.shift_init))
        channel_affine(self, self.dim, elementwise_affine, bias)
        place(self, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * erf(alpha * x + shift) + bias`` to ``x`` (..., dim)."""
        return self.weight * torch.erf(self.alpha * x + self.shift) + self.bias

    def extra_repr(self) -> str:
        return f"{self.dim}, alpha_init={self.alpha_init}, shift_init={self.shift_init}"
