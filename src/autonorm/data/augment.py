"""Whole-batch image augmentation on (B, C, H, W) tensors (uint8 or float), without Python loops.

Random crop with zero padding and horizontal flip, the standard CIFAR-10 recipe of
"Deep Residual Learning for Image Recognition" (He et al., 2016). All randomness is drawn from the
given :class:`torch.Generator` (on the generator's device), so results are reproducible.
"""

from __future__ import annotations

import torch

__all__ = ["random_crop", "random_flip"]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad every image by ``padding`` pixels, then crop it back to (H, W) at a random offset.

    Each sample gets its own offset (uniform over the 2*padding+1 positions per axis); the crop is
    one advanced-indexing gather over the whole batch. Returns a new tensor of x's dtype and shape.
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 or x.shape[0] == 0:
        return x.clone()
    b, c, h, w = x.shape
    p = padding
    padded = x.new_zeros((b, c, h + 2 * p, w + 2 * p))
    padded[:, :, p : p + h, p : p + w] = x
    dev = _gen_device(generator)
    off = torch.randint(0, 2 * p + 1, (2, b), generator=generator, device=dev).to(x.device)
    rows = off[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = off[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each image of the batch horizontally with probability ``p`` (independently per sample)."""
    if x.ndim != 4:
        raise ValueError(f"random_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    dev = _gen_device(generator)
    mask = (torch.rand(x.shape[0], generator=generator, device=dev) < p).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)
