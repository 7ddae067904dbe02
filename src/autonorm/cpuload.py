"""Other processes' CPU use on this machine: ``/proc/stat`` minus this process (standard library
only, so that :mod:`autonorm.kernels` and :mod:`autonorm.eval.machine` share it).

Other processes using at least :data:`BUSY_OTHER_CORES` cores (on average over an interval) make
the machine "busy": timings taken then are unreliable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

__all__ = ["BUSY_OTHER_CORES", "Counters", "cpu_counters", "other_cores"]

#: Other processes using at least this many cores (on average) make the machine "busy".
BUSY_OTHER_CORES = 0.25

#: (busy CPU-seconds of the whole machine, CPU-seconds of this process and its ended children, wall time)
Counters = tuple[float, float, float]


def cpu_counters() -> Optional[Counters]:
    """(busy CPU-seconds of the whole machine, CPU-seconds of this process and of its children
    that have ended, wall time), or None where ``/proc/stat`` cannot be read. A measurement's own
    child processes (e.g. the benchmark's, one per setting) are thus not "other processes"."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        vals = [int(v) for v in fields]
        own = os.times()
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = sum(vals[:8]) - vals[3] - (vals[4] if len(vals) > 4 else 0)
    return busy / hz, own.user + own.system + own.children_user + own.children_system, time.perf_counter()


def other_cores(a: Optional[Counters], b: Optional[Counters]) -> Optional[float]:
    """Average cores used by other processes between two :func:`cpu_counters` readings (None
    where either is missing)."""
    if a is None or b is None or b[2] <= a[2]:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / (b[2] - a[2]))
