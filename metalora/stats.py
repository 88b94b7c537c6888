"""Summaries over seeds (mean and standard error), and whether one metric value beats
another."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); 0 for one value) of the
    finite values (a metric not defined for a seed, ``nan``, is left out)."""
    values = [v for v in values if math.isfinite(v)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


TIE_TOLERANCE = 1e-6
"""Metric values this close (relative; at least absolute) are equal (see :func:`improves`)."""


def improves(value: float, best: float, higher_is_better: bool) -> bool:
    """Whether ``value`` beats ``best``; within TIE_TOLERANCE they tie, which ``best`` keeps.
    The same number of correct answers, averaged over tasks in float32 in another order, can
    differ in the 9th digit (0.5545454582 and 0.5545454542 for 183 of 330)."""
    if abs(value - best) <= TIE_TOLERANCE * max(1.0, abs(best)):
        return False
    return value > best if higher_is_better else value < best
