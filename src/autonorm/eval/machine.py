"""What a measurement ran on, and whether the machine was quiet: CPU model and instruction-set
flags, usable cores, GPU name, and other processes' CPU use (``/proc/stat`` minus this process,
:mod:`autonorm.cpuload`, with the load average where that cannot be read).

Other processes using at least :data:`BUSY_OTHER_CORES` cores (on average) make the machine
"busy": its timings are unreliable and are reported as such.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..cpuload import BUSY_OTHER_CORES, cpu_counters, other_cores

__all__ = ["BUSY_OTHER_CORES", "ISA_FLAGS", "machine_info", "usable_cores", "cpu_counters", "other_cores", "loadavg", "check_idle"]

#: Instruction-set flags printed with the CPU model (all flags are kept).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model and instruction-set flags, core counts, platform, GPU name (for ``cuda``)."""
    cpu_model, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and cpu_model in ("unknown", platform.processor()):
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flag_set = set(flags.split())
    return {
        "cpu_model": cpu_model,
        "cpu_flags": flags,
        "cpu_isa": [f for f in ISA_FLAGS if f in flag_set],
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None,
    }


def loadavg() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where unavailable."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def check_idle(sample_s: float = 1.0) -> dict[str, Any]:
    """Sample other processes' CPU use for ``sample_s`` seconds and read the load average.

    Busy when others use >= :data:`BUSY_OTHER_CORES` cores during the sample. The 1-minute load
    average is recorded but decides only where ``/proc/stat`` cannot be read (busy when it is at
    least the core count): it lags by about a minute, so right after other jobs finish it still
    reads high on an idle machine.
    """
    a = cpu_counters()
    time.sleep(max(0.0, sample_s))
    b = cpu_counters()
    others = other_cores(a, b)
    load = loadavg()
    cores = usable_cores()
    if others is not None:
        busy = others >= BUSY_OTHER_CORES
    else:
        busy = load is not None and load[0] >= cores
    return {"other_cpu_cores": others, "loadavg": load, "cores": cores, "busy": bool(busy), "sample_s": sample_s}
