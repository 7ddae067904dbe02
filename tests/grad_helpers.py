"""Helpers shared by the implementation tests (not collected by pytest: no ``test_`` prefix)."""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable, Sequence

import torch
from torch import nn

from autonorm.norms import set_impl


def with_impl(module: nn.Module, impl: str) -> nn.Module:
    """A deep copy of ``module`` (same parameter values) whose norms compute with ``impl``."""
    other = copy.deepcopy(module)
    assert set_impl(other, impl) > 0, f"{type(module).__name__} holds no norm with an impl"
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
