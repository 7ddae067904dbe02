"""Temperature schedules for the Gumbel gate."""
from __future__ import annotations

import math

SCHEDULES: tuple[str, ...] = ("constant", "linear", "exponential", "cosine")


def temperature_at(
    step: int,
    total_steps: int,
    tau_start: float,
    tau_end: float,
    schedule: str = "constant",
) -> float:
    """Temperature at ``step`` of ``total_steps``.

    * ``constant``:    ``tau_start`` at every step;
    * ``linear``:      ``tau_start + (tau_end - tau_start) * t``;
    * ``exponential``: ``tau_start * (tau_end / tau_start) ** t`` (geometric interpolation);
    * ``cosine``:      ``tau_end + (tau_start - tau_end) * (1 + cos(pi * t)) / 2``;

    with progress ``t = clamp(step / total_steps, 0, 1)``; non-constant schedules return exactly
    ``tau_start`` at step 0 and exactly ``tau_end`` for ``step >= total_steps`` (or when
    ``total_steps <= 0``). All are monotone between the two end points.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got schedule={schedule!r}")
    tau_start, tau_end = float(tau_start), float(tau_end)
    if not tau_start > 0:
        raise ValueError(f"tau_start must be > 0, got tau_start={tau_start!r}")
    if not tau_end > 0:
        raise ValueError(f"tau_end must be > 0, got tau_end={tau_end!r}")
    if schedule == "constant":
        return tau_start
    if total_steps <= 0 or step >= total_steps:
        return tau_end
    if step <= 0:
        return tau_start
    t = float(step) / float(total_steps)
    if schedule == "linear":
        tau = tau_start + (tau_end - tau_start) * t
    elif schedule == "exponential":
        tau = tau_start * (tau_end / tau_start) ** t
    else:  # cosine
        tau = tau_end + (tau_start - tau_end) * 0.5 * (1.0 + math.cos(math.pi * t))
    lo, hi = min(tau_start, tau_end), max(tau_start, tau_end)
    return min(max(tau, lo), hi)
