"""Process-wide settings of the entry points (training, evaluation, the benchmark): glibc
malloc's thresholds.

Why: glibc's ``malloc`` serves a request above its *mmap threshold* with a fresh ``mmap`` and
unmaps it on ``free``, and gives the top of its heap back to the system above its *trim
threshold*. Its dynamic rule raises the mmap threshold to the largest block freed so far, but
never above 32 MiB. A training step allocates and frees the same large activation and gradient
tensors at every step, so every block above 32 MiB, and the heap top, is faulted in afresh each
time: on ``vit_tiny`` at batch 256 (MLP activations of 51 MiB) 200,000-330,000 minor page faults,
about 1 GiB of zeroed pages, per step. :func:`tune_malloc` raises both thresholds to 1 GiB, so
freed blocks stay in the heap and the next step reuses them (peak resident memory grows by a few
percent). Results are unchanged (allocation only); the speed-up depends on the model's tensor
sizes (README, Performance: measured figures).

``AUTONORM_MALLOC=default`` leaves malloc as it is. Elsewhere than glibc (no ``mallopt``) nothing
changes. Every benchmark and latency record states what was in effect (:func:`malloc_state`).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["MALLOC_THRESHOLD", "malloc_state", "tune_malloc"]

#: Bytes: blocks up to this size are kept in the heap when freed (mmap and trim thresholds).
MALLOC_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_state: dict[str, Any] = {"tuned": False, "why": "not requested"}


def tune_malloc(threshold: int = MALLOC_THRESHOLD) -> dict[str, Any]:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes (see the module docstring);
    idempotent (once raised, they stay raised for the process). Returns :func:`malloc_state`."""
    if _state["tuned"]:
        return malloc_state()
    if os.environ.get("AUTONORM_MALLOC", "").strip().lower() == "default":
        _state.update(tuned=False, why="AUTONORM_MALLOC=default")
        return malloc_state()
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        _state.update(tuned=False, why="no mallopt (not glibc)")
        return malloc_state()
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = int(min(threshold, 2**31 - 1))
    if mallopt(_M_MMAP_THRESHOLD, value) == 1 and mallopt(_M_TRIM_THRESHOLD, value) == 1:
        _state.update(tuned=True, why=f"mmap and trim thresholds {value} bytes")
    else:
        _state.update(tuned=False, why="mallopt refused the thresholds")
    return malloc_state()


def malloc_state() -> dict[str, Any]:
    """``{"tuned": bool, "why": str}``: whether :func:`tune_malloc` changed malloc in this process."""
    return dict(_state)
