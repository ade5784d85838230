"""The statistics of the accuracy tables: 95 % Wilson intervals and the exact McNemar test."""

from __future__ import annotations

import math

from .._checks import check_int

__all__ = ["Z95", "mcnemar_exact", "wilson_interval"]

#: The two-sided 95 % quantile of the standard normal distribution.
Z95 = 1.959963984540054


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ((nan, nan) for ``total == 0``).

    Example:
        >>> low, high = wilson_interval(8, 10)
        >>> round(low, 4), round(high, 4)
        (0.4902, 0.9433)
    """
    total = check_int(total, "total", low=0)
    correct = check_int(correct, "correct", 0, total)
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    denom = 1 + Z95**2 / total
    centre = (p + Z95**2 / (2 * total)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (binomial, p = 1/2).

    Example:
        >>> mcnemar_exact(5, 0)  # 2 * 0.5**5
        0.0625
    """
    worse = check_int(worse, "worse", low=0)
    better = check_int(better, "better", low=0)
    n = worse + better
    if n == 0:
        return 1.0
    k = min(worse, better)
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)
    ]
    top = max(log_terms)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(t - top) for t in log_terms))
