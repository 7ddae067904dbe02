"""The keyword arguments every norm layer accepts as timm and torch pass them to a norm layer
(``norm_layer(dim, eps=..., elementwise_affine=..., bias=..., device=..., dtype=...)``), handled
once for all norms."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def check_dim(dim: int) -> int:
    """``dim`` as an int, or a ValueError when it is not a positive integer."""
    if isinstance(dim, bool) or int(dim) != dim or int(dim) <= 0:
        raise ValueError(f"dim must be a positive integer, got dim={dim!r}")
    return int(dim)


def channel_affine(module: nn.Module, dim: int, elementwise_affine: bool = True, bias: bool = True) -> None:
    """Give ``module`` its per-channel ``weight`` (ones) and ``bias`` (zeros), shape (dim,).

    Learnable parameters by default. ``elementwise_affine=False`` (no affine) or ``bias=False``
    (no shift) make them constant buffers instead -- ones and zeros, not learned and not in the
    state dict (as torch's ``None`` affine) -- so the norm's formula and every implementation of
    it stay the same: ``y * 1 + 0`` is exactly ``y``.
    """
    affine = bool(elementwise_affine)
    for name, init, learn in (("weight", torch.ones, affine), ("bias", torch.zeros, affine and bool(bias))):
        if learn:
            module.register_parameter(name, nn.Parameter(init(dim)))
        else:
            module.register_buffer(name, init(dim), persistent=False)


def place(module: nn.Module, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None) -> None:
    """Move ``module``'s parameters and buffers to ``device`` and floating ones to ``dtype``
    (``nn.Module.to``; nothing when both are None)."""
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)


def check_eps(eps: Optional[float]) -> Optional[float]:
    """``eps`` as a float (None stays None), or a ValueError when it is not > 0."""
    if eps is None:
        return None
    if not float(eps) > 0:
        raise ValueError(f"eps must be > 0, got eps={eps!r}")
    return float(eps)
