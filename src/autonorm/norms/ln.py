"""Plain LayerNorm over the channel (last) dimension of token tensors."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_norm


@register_norm("ln", display="LN")
class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba, Kiros, Hinton, 2016) over the last dimension of ``x`` (B, N, C).

    Thin subclass of :class:`torch.nn.LayerNorm` with the ViT default ``eps=1e-6`` and a
    learnable per-channel affine (``weight`` ones, ``bias`` zeros).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got dim={dim!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got eps={eps!r}")
        super().__init__(int(dim), eps=float(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 (same as nn.LayerNorm)
        return super().forward(x)
