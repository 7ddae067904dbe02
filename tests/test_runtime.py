"""autonorm.runtime: malloc's thresholds, raised by the entry points so that the large tensors of
one step are reused by the next instead of being faulted in afresh."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from conftest import REPO

try:
    _GLIBC = hasattr(ctypes.CDLL(None), "mallopt") and sys.platform.startswith("linux")
except OSError:
    _GLIBC = False

# A 64 MiB tensor allocated and freed five times: minor page faults per allocation, after eight
# uncounted rounds (tuned, the heap settles within a few; at the defaults every block above glibc's
# largest dynamic mmap threshold, 32 MiB, is unmapped on free and faulted in again).
PROBE = """
import resource, sys, torch
from autonorm.runtime import tune_malloc
state = tune_malloc() if sys.argv[1] == "tune" else {"tuned": False}
for _ in range(8):
    x = torch.empty(16 << 20).fill_(1.0); del x
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = torch.empty(16 << 20); x.fill_(1.0); del x
print(state["tuned"], (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5)
"""


def _probe(mode: str, **env: str) -> tuple[bool, float]:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuned, faults = proc.stdout.split()[-2:]
    return tuned == "True", float(faults)


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt only")
def test_tuned_malloc_reuses_large_blocks_instead_of_faulting_them_in_again() -> None:
    tuned, faults_tuned = _probe("tune")
    untuned, faults_default = _probe("default")
    assert tuned and not untuned
    assert faults_default > 3 * max(faults_tuned, 1.0), (faults_default, faults_tuned)


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt only")
def test_autonorm_malloc_default_leaves_malloc_alone() -> None:
    tuned, faults = _probe("tune", AUTONORM_MALLOC="default")
    assert not tuned and faults > 10


def test_malloc_state_says_what_is_in_effect(monkeypatch) -> None:
    from autonorm import runtime

    monkeypatch.setattr(runtime, "_state", {"tuned": False, "why": "not requested"})  # a fresh process
    monkeypatch.setenv("AUTONORM_MALLOC", "default")
    assert runtime.tune_malloc() == {"tuned": False, "why": "AUTONORM_MALLOC=default"}
    assert runtime.malloc_state()["tuned"] is False
