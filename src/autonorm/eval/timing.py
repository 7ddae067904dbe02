"""Interleaved timing of compared variants, on ``torch.utils.benchmark``.

A figure that compares variants (a norm's training step against LayerNorm's, a loader pass against
a training step) is measured INTERLEAVED: the variants run round-robin (one round = a few timed
repetitions of each, the opening variant rotating from round to round) after untimed warm-up
calls, and a ratio is the median over rounds of per-round ratios of medians, so slow drifts of the
machine's speed cancel. Each repetition is read with ``torch.utils.benchmark``'s clock, which
synchronises an accelerator before reading the time. A single statement's rate (the matmul
reference) is measured with :class:`torch.utils.benchmark.Timer` itself.
"""

from __future__ import annotations

import gc
import statistics
from typing import Any, Callable, Sequence

import torch
from torch.utils import benchmark
from torch.utils.benchmark.utils.timer import timer as clock

__all__ = ["round_robin", "per_round_medians", "all_median", "ratio_of_rounds", "median", "statement_seconds"]


def round_robin(units: dict[str, Callable[[], Any]], rounds: int, reps: int | dict[str, int] = 1, warmup: int = 1) -> dict[str, list[list[float]]]:
    """Time each unit ``reps`` times per round, the units taken in turn, for ``rounds`` rounds.

    ``warmup`` untimed calls of every unit come first. The unit that opens a round rotates, so no
    variant always runs first. Returns ``{name: [[seconds of each rep] for each round]}``.
    """
    names = list(units)
    for _ in range(max(0, warmup)):
        for n in names:
            units[n]()
    out: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        gc.collect()
        for n in names[k:] + names[:k]:
            times = []
            for _ in range(reps[n] if isinstance(reps, dict) else reps):
                t0 = clock()
                units[n]()
                times.append(clock() - t0)
            out[n].append(times)
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def per_round_medians(times: list[list[float]]) -> list[float]:
    """Median of each round's repetitions."""
    return [median(t) for t in times]


def all_median(times: list[list[float]]) -> float:
    """Median over every timed repetition of every round."""
    return median([t for rnd in times for t in rnd])


def ratio_of_rounds(num: list[list[float]], den: list[list[float]]) -> float:
    """Median over rounds of (round median of ``num``) / (round median of ``den``)."""
    return median([a / b for a, b in zip(per_round_medians(num), per_round_medians(den))])


def statement_seconds(stmt: str, globals: dict[str, Any], min_run_time: float) -> benchmark.Measurement:
    """``stmt`` timed by :meth:`torch.utils.benchmark.Timer.blocked_autorange` with this process's
    torch threads (the Timer's own default is one thread)."""
    return benchmark.Timer(stmt=stmt, globals=globals, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time)
