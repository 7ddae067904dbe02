"""The speed paths of the norms: C++ kernels (:mod:`.native`, ``csrc/``), torch-op autograd
Functions and ``torch.compile`` (:mod:`.fused`), the choice by measurement (:mod:`.select`) and
the inference forms (:mod:`.deploy`).

:mod:`autonorm.norms` holds the eager formulas and asks :func:`autonorm.norms.impl.fast_path`
for a faster way at each call; importing this package fills that table (below: one line per op,
one function per ``impl``) and declares the inference forms of DyT, AutoNorm and AFN in the norm
registry. ``import autonorm`` imports it. This package imports :mod:`autonorm.norms` and torch
only; nothing of :mod:`autonorm.norms` imports it.
"""
from __future__ import annotations

from ..norms.impl import register_fast_path
from . import deploy, fused, native, select
from .fused import (
    afn_affine_auto,
    afn_affine_fused,
    afn_batch_auto,
    afn_batch_fused,
    afn_compiled,
    blend_auto,
    blend_compiled,
    blend_fused,
    dyt_auto,
    dyt_compiled,
    dyt_fused,
    token_mean_auto,
    token_mean_fused,
    token_moments_auto,
    token_moments_fused,
)

# op (the norm that asks for it)          impl -> function (same arguments as the eager formula)
register_fast_path("dyt", auto=dyt_auto, fused=dyt_fused, compiled=dyt_compiled)  # DyT
register_fast_path("blend", auto=blend_auto, fused=blend_fused, compiled=blend_compiled)  # AutoNorm, tanh branch
register_fast_path("token_mean", auto=token_mean_auto, fused=token_mean_fused)  # AutoNorm's gate input (mean)
register_fast_path("token_moments", auto=token_moments_auto, fused=token_moments_fused)  # its mean_scale input
register_fast_path("afn", compiled=afn_compiled)  # AFN's whole forward
register_fast_path("afn_batch", auto=afn_batch_auto, fused=afn_batch_fused)  # AFN, batch statistics
register_fast_path("afn_affine", auto=afn_affine_auto, fused=afn_affine_fused)  # AFN's output

__all__ = ["deploy", "fused", "native", "select"]
