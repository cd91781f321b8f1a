"""Statistics for A/B benchmark pairs.

Method (stated in every report): each pair runs both paths back to back in the same VM,
the order alternating between pairs. The per-path figure is the median over pairs. The
ratio passthru/block is the geometric mean of the per-pair ratios, with a 95% Student-t
confidence interval computed on the paired log-ratios ``ln(a_i / b_i)`` and exponentiated
back (pairing removes the drift both paths share; logs make the interval symmetric for
ratios). Needs at least 2 pairs for an interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

# Two-sided 95% quantiles of Student's t (t_{0.975, df}); between entries the next lower
# df is used, which makes the interval slightly wider, never narrower.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}
_Z975 = 1.960


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("df must be at least 1")
    if df > 120:
        return _Z975
    return _T975[max(k for k in _T975 if k <= df)]


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of nothing")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float | None
    high: float | None
    n: int

    def to_json(self) -> dict:
        return {"estimate": self.estimate, "ci95": [self.low, self.high] if self.low is not None else None,
                "n": self.n}


def mean_ci(values: Sequence[float]) -> Interval:
    """Mean with a 95% t-interval (None bounds for fewer than 2 values)."""
    m, sd = mean_sd(values)
    if len(values) < 2:
        return Interval(m, None, None, len(values))
    half = t975(len(values) - 1) * sd / math.sqrt(len(values))
    return Interval(m, m - half, m + half, len(values))


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> Interval:
    """Geometric-mean ratio a/b over pairs with a 95% t-interval on the log-ratios."""
    if len(a) != len(b) or not a:
        raise ValueError("paired_ratio needs two equally long, non-empty sequences")
    if any(x <= 0 for x in (*a, *b)):
        raise ValueError("paired_ratio needs positive values")
    logs = [math.log(x / y) for x, y in zip(a, b)]
    iv = mean_ci(logs)
    if iv.low is None:
        return Interval(math.exp(iv.estimate), None, None, iv.n)
    return Interval(math.exp(iv.estimate), math.exp(iv.low), math.exp(iv.high), iv.n)


def geomean(values: Sequence[float]) -> Interval:
    """Geometric mean with a 95% t-interval computed on the logs (None bounds for one value).

    Per path, the quotient of the two geometric means over the same pairs is exactly the
    geometric mean of the per-pair ratios: the table's path columns and its ratio agree.
    """
    if not values or any(v <= 0 for v in values):
        raise ValueError("geomean needs positive values")
    iv = mean_ci([math.log(v) for v in values])
    if iv.low is None:
        return Interval(math.exp(iv.estimate), None, None, iv.n)
    return Interval(math.exp(iv.estimate), math.exp(iv.low), math.exp(iv.high), iv.n)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation (sd / mean); 0 for one value."""
    m, sd = mean_sd(values)
    return sd / m if m else 0.0


# -- log-bucket latency histograms, as the engine prints them ([lo_ns, count], ascending) -----


def merge_hists(hists: Sequence[Sequence[Sequence[int]]]) -> list[list[int]]:
    counts: dict[int, int] = {}
    for h in hists:
        for lo, n in h:
            counts[lo] = counts.get(lo, 0) + n
    return [[lo, counts[lo]] for lo in sorted(counts)]


def hist_quantile(hist: Sequence[Sequence[int]], p: float) -> int:
    """Lower bound of the bucket holding the ceil(p*n)-th smallest sample (the engine's rule)."""
    total = sum(n for _, n in hist)
    if not total:
        return 0
    rank = max(1, math.ceil(p * total))
    cum = 0
    for lo, n in hist:
        cum += n
        if cum >= rank:
            return lo
    return hist[-1][0]


def hist_cdf(hist: Sequence[Sequence[int]]) -> tuple[list[int], list[float]]:
    """Points (bucket lower bound, fraction of samples at or below that bucket)."""
    total = sum(n for _, n in hist)
    xs, ys, cum = [], [], 0
    for lo, n in hist:
        cum += n
        xs.append(lo)
        ys.append(cum / total if total else 0.0)
    return xs, ys
