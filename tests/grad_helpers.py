"""Helpers shared by the implementation tests (not collected by pytest: no ``test_`` prefix)."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable, Sequence

import torch
from torch import nn


def with_impl(module: nn.Module, impl: str) -> nn.Module:
    """A deep copy of ``module`` with ``impl`` set on it and its inner norms (same parameters)."""
    other = copy.deepcopy(module)
    for m in other.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return other


def assert_every_requires_grad_subset_matches(
    fn: Callable[..., torch.Tensor], ref: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], **tol: Any
) -> None:
    """For every non-empty subset of ``inputs`` requiring grad, ``fn`` and ``ref`` give the same
    output and the same gradients for the inputs that require them (what frozen branches and
    constant gates rely on)."""
    for mask in itertools.product([False, True], repeat=len(inputs)):
        if not any(mask):
            continue
        t1 = [t.clone().requires_grad_(m) for t, m in zip(inputs, mask)]
        t2 = [t.clone().requires_grad_(m) for t, m in zip(inputs, mask)]
        y1, y2 = fn(*t1), ref(*t2)
        torch.testing.assert_close(y1, y2, **tol)
        g = torch.randn_like(y1)
        (y1 * g).sum().backward()
        (y2 * g).sum().backward()
        for a, b in zip(t1, t2):
            if a.requires_grad:
                torch.testing.assert_close(a.grad, b.grad, **tol)
