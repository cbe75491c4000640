"""Small-sample tests for paired seed comparisons (no SciPy needed).

Both answer "is method A better than B?" from per-seed differences ``d_s = A(s) - B(s)``, one-sided:

- ``sign_test_p``: distribution-free. ``P(X >= wins)``, ``X ~ Binomial(n, 1/2)``. Uses only the signs, so
  with 5 seeds it can never go below 1/32.
- ``paired_t_test_p``: Student's t on the differences, ``t = mean(d) / (std(d) / sqrt(n))`` with ``n - 1``
  degrees of freedom; ``P(T >= t)``. Uses the sizes too, and assumes the differences are roughly normal.
"""

from __future__ import annotations

import math
import statistics


def sign_test_p(wins: int, n: int) -> float | None:
    """One-sided sign test: ``P(Binomial(n, 1/2) >= wins)``; None without pairs."""
    if n == 0:
        return None
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def student_t_sf(t: float, df: int) -> float:
    """``P(T >= t)`` for Student's t with an integer ``df >= 1`` (closed form, Abramowitz & Stegun 26.7.3-4).

    With ``theta = atan(|t| / sqrt(df))``, ``s = sin(theta)``, ``c = cos(theta)``, ``A = P(|T| < |t|)`` is:
    df = 1: ``2 theta / pi``; other odd df: ``(2/pi) (theta + s c (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...))`` up to
    ``c^(df-3)``; even df: ``s (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...)`` up to ``c^(df-2)``. Then
    ``P(T >= t) = (1 - A) / 2`` for ``t >= 0`` and ``(1 + A) / 2`` below.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    odd = df % 2 == 1
    series, term = 1.0, 1.0
    for k in range(1, (df - 1) // 2 if odd else df // 2):    # the powers c^2 .. c^(df-3) (odd), .. c^(df-2) (even)
        term *= ((2 * k) / (2 * k + 1) if odd else (2 * k - 1) / (2 * k)) * c * c
        series += term
    if odd:
        a = 2 / math.pi * (theta + (s * c * series if df > 1 else 0.0))
    else:
        a = s * series
    a = min(max(a, 0.0), 1.0)
    return (1 - a) / 2 if t >= 0 else (1 + a) / 2


def paired_t_test_p(diffs: list[float]) -> float | None:
    """One-sided paired t-test that the mean difference is > 0; None with fewer than 2 pairs.

    All differences equal: p is 0 if they are positive and 1 otherwise (no spread to test against).
    """
    n = len(diffs)
    if n < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if mean > 0 else 1.0
    return student_t_sf(mean / (sd / math.sqrt(n)), n - 1)
