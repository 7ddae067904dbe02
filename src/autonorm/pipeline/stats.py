"""Statistics for tables: summaries over seeds and paired comparisons with Holm's correction.

* :func:`summary`: mean, sample standard deviation (ddof=1; None for a single value: one run has
  no spread) and n.
* :func:`paired_t`: the paired t-test of two methods' per-seed values (scipy.stats.ttest_rel),
  with the mean difference and its t confidence interval.
* :func:`holm`: Holm's step-down adjustment of a family of p-values (Holm, 1979, "A simple
  sequentially rejective multiple test procedure").
* :func:`compare_methods`: every pair of methods (or every method against one baseline, or the
  planned pairs of :func:`family_pairs`), paired by seed, Holm-adjusted over the family; a difference is a finding only when its adjusted
  p-value is below ``alpha``. Reusable by any table section: it takes ``{method: {seed: value}}``.
  Each comparison also says how large a difference its seeds could have confirmed
  (:func:`needed_difference`), so "no significant difference" reads with the design's power.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["compare_methods", "family_pairs", "holm", "needed_difference", "paired_t", "planning", "seeds_needed", "summary"]


def summary(values: Sequence[float]) -> Optional[dict[str, Any]]:
    """``{"mean", "std", "n"}`` of ``values`` (std: ddof=1, None when n == 1); None when empty."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size >= 2 else None, "n": int(arr.size)}


def paired_t(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired t-test of ``a`` against ``b`` (same length, pair i = seed i).

    Returns ``{"n", "mean_diff", "se", "ci": (low, high), "t", "p"}`` for ``a - b`` (two-sided;
    ``se``: the standard error of the mean difference, sd / sqrt(n)). With fewer than two pairs
    there is no test (``se``, ``t``, ``p``, ``ci`` None). Identical differences (zero variance)
    give p = 1 when their mean is 0 and p = 0 otherwise (scipy's limits).
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values need equal 1-D lengths, got {x.shape} and {y.shape}")
    d = x - y
    out: dict[str, Any] = {"n": int(d.size), "mean_diff": float(d.mean()) if d.size else None, "se": None, "ci": None, "t": None, "p": None}
    if d.size < 2:
        return out
    sd = float(d.std(ddof=1))
    out["se"] = sd / math.sqrt(d.size)
    if sd == 0.0:
        out.update(t=math.copysign(math.inf, out["mean_diff"]) if out["mean_diff"] else 0.0,
                   p=1.0 if out["mean_diff"] == 0 else 0.0, ci=(out["mean_diff"], out["mean_diff"]))
        return out
    res = stats.ttest_rel(x, y)
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    out.update(t=float(res.statistic), p=float(res.pvalue), ci=(out["mean_diff"] - half, out["mean_diff"] + half))
    return out


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm-adjusted p-values in the input order (None stays None and is not counted).

    The k-th smallest of m p-values is multiplied by m - k + 1, running maxima keep the order,
    and values are capped at 1.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    out: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def needed_difference(se: Optional[float], n: int, family: int, alpha: float = 0.05) -> Optional[float]:
    """The smallest mean difference (in the values' unit) that a paired t-test on ``n`` pairs with
    standard error ``se`` calls a finding at family-wise level ``alpha`` over ``family`` tests:
    ``t(1 - alpha / (2 family), n - 1) * se``. That is Bonferroni's bound, the strictest step of
    Holm's method, so a difference this large always passes. None without a test (n < 2)."""
    from scipy import stats

    if se is None or n < 2 or family < 1:
        return None
    return float(stats.t.ppf(1 - alpha / (2 * family), n - 1)) * float(se)


def seeds_needed(sd: float, difference: float, family: int, alpha: float = 0.05, most: int = 1000) -> Optional[int]:
    """How many paired seeds a comparison needs before a true ``difference`` (same unit as ``sd``,
    the standard deviation of the paired differences) clears :func:`needed_difference` over a
    family of ``family`` tests: the smallest n >= 2 with ``t(1 - alpha / 2 family, n - 1) * sd /
    sqrt(n) < |difference|``. A planning figure (the observed mean difference would have to come
    out at the true one); None when more than ``most`` would be needed."""
    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        needed = needed_difference(sd / math.sqrt(n), n, family, alpha)
        if needed is not None and needed < abs(difference):
            return n
    return None


def planning(comparisons: Sequence[Mapping[str, Any]], alpha: float = 0.05, difference: float = 0.01) -> Optional[dict[str, Any]]:
    """For a family of :func:`compare_methods` results: the median standard deviation of the
    testable pairs' differences and the seeds per row (:func:`seeds_needed`) that would confirm a
    true ``difference`` at that spread over this many tests. ``{"sd", "tests", "difference",
    "seeds"}``, or None when no pair is testable."""
    sds = sorted(float(c["se"]) * math.sqrt(int(c["n"])) for c in comparisons if c.get("se") is not None)
    if not sds:
        return None
    sd = sds[len(sds) // 2]
    return {"sd": sd, "tests": len(sds), "difference": difference, "seeds": seeds_needed(sd, difference, len(sds), alpha)}


def family_pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """Planned comparisons from ``"A1,A2:B1,B2"`` specs: every row on the left against every row
    on the right, in that order, for each spec; a pair given twice (either way round) counts once.
    Raises ValueError for a spec without exactly one ``:`` or with an empty side."""
    pairs: list[tuple[str, str]] = []
    seen: set[frozenset[str]] = set()
    for spec in specs:
        sides = spec.split(":")
        names = [[n.strip() for n in side.split(",") if n.strip()] for side in sides]
        if len(sides) != 2 or not all(names):
            raise ValueError(f"a comparison family is 'A1,A2:B1,B2' (rows on the left against rows on the right), got {spec!r}")
        for a in names[0]:
            for b in names[1]:
                if a != b and frozenset((a, b)) not in seen:
                    seen.add(frozenset((a, b)))
                    pairs.append((a, b))
    return pairs


def compare_methods(
    per_seed: Mapping[str, Mapping[Hashable, float]],
    baseline: Optional[str] = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    pairs: Optional[Sequence[tuple[str, str]]] = None,
) -> list[dict[str, Any]]:
    """Paired-by-seed comparisons of methods with Holm's correction over all of them.

    Args:
        per_seed: ``{method: {seed: value}}``; only seeds both methods have are paired.
        baseline: compare every method to this one only (fewer tests); None: every pair.
        alpha: family-wise error rate for the wording.
        confidence: level of the interval of the mean difference.
        pairs: planned comparisons ``(a, b)`` (:func:`family_pairs`) instead of every pair or the
            baseline; a method missing from ``per_seed`` has no seeds (not testable). The fewer
            the comparisons, the smaller the difference they can confirm.

    Returns one dict per pair ``(a, b)`` (a listed before b in ``per_seed``, or b the baseline):
    ``{"a", "b", "n", "seeds", "mean_diff", "se", "ci", "t", "p", "p_holm", "needed", "finding"}``
    where ``finding`` is ``"a > b"`` / ``"a < b"`` when ``p_holm < alpha``, ``"no significant
    difference"`` otherwise, and ``"not testable (n paired seeds)"`` below two pairs; ``needed``
    is :func:`needed_difference` over the family of testable pairs (a ``|mean_diff|`` above it
    passes).
    """
    names = list(per_seed)
    if pairs is not None:
        if baseline is not None:
            raise ValueError("give either baseline or pairs, not both")
        pairs = list(pairs)
    elif baseline is not None:
        if baseline not in per_seed:
            raise KeyError(f"baseline {baseline!r} is not one of {names}")
        pairs = [(m, baseline) for m in names if m != baseline]
    else:
        pairs = list(combinations(names, 2))
    out = []
    for a, b in pairs:
        va, vb = per_seed.get(a, {}), per_seed.get(b, {})
        seeds = sorted(set(va) & set(vb), key=lambda s: (str(type(s)), s))
        res = paired_t([va[s] for s in seeds], [vb[s] for s in seeds], confidence)
        out.append({"a": a, "b": b, "seeds": seeds, **res})
    family = sum(r["p"] is not None for r in out)
    for row, p_adj in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = p_adj
        row["needed"] = needed_difference(row["se"], row["n"], family, alpha)
        if p_adj is None:
            row["finding"] = f"not testable ({row['n']} paired seed{'s' if row['n'] != 1 else ''})"
        elif p_adj < alpha:
            row["finding"] = "a > b" if row["mean_diff"] > 0 else "a < b"
        else:
            row["finding"] = "no significant difference"
    return out
