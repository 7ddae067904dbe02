"""Plain LayerNorm over the channel (last) dimension."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layer_args import channel_affine, check_dim, check_eps, place
from .registry import register_norm


@register_norm("ln", display="LN")
class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba, Kiros, Hinton, 2016) over the last dimension of ``x`` (..., C).

    :class:`torch.nn.LayerNorm` with the ViT default ``eps=1e-6`` and a learnable per-channel
    affine (``weight`` ones, ``bias`` zeros). ``elementwise_affine=False`` / ``bias=False`` keep
    ``weight`` / ``bias`` as constant buffers (ones / zeros, not learned, not in the state dict)
    instead of torch's None, so that every norm built on this one has tensors to hand on.
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: Optional[torch.device | str] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        dim, eps = check_dim(dim), check_eps(eps)
        super().__init__(dim, eps=eps, elementwise_affine=False, bias=False)
        del self.weight, self.bias  # torch's None placeholders
        channel_affine(self, dim, elementwise_affine, bias)
        self.elementwise_affine = bool(elementwise_affine)
        self.learn_bias = self.elementwise_affine and bool(bias)
        place(self, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 (same as nn.LayerNorm)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, bias={self.learn_bias}"
