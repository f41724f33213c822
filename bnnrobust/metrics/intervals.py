"""Confidence intervals for accuracies measured on n samples.

An accuracy on ``n`` test images is a binomial proportion ``correct / n``; its sampling
uncertainty matters when attacks or models are compared on a few hundred images (at
n = 1000 and 80 % accuracy the 95 % interval is about ±2.5 points). The Wilson score interval
is used (not the normal ``p ± z·sqrt(p(1−p)/n)``): it stays inside [0, 1], is not empty at
0 % or 100 %, and has close to nominal coverage for small n.
"""

from __future__ import annotations

import math
from numbers import Integral

__all__ = ["wilson_interval", "wilson_interval_percent"]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of the proportion ``correct / n``, as fractions in [0, 1].

    ``(p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``p̂ = correct / n``;
    ``z = 1.96`` gives the 95 % interval. ``correct = 0`` gives a lower end of exactly 0 and
    ``correct = n`` an upper end of exactly 1.

    Raises:
        ValueError: ``n < 1`` (no samples: no interval), ``correct`` outside ``[0, n]``, a
            non-integer count, or ``z`` not a finite number > 0.
    """
    for name, value in (("correct", correct), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, Integral):  # int, numpy integers
            raise ValueError(f"wilson_interval: {name} must be an integer count, got {value!r}.")
    correct, n = int(correct), int(n)
    if n < 1:
        raise ValueError(f"wilson_interval: n must be >= 1 (no samples give no interval), got {n}.")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: correct must lie in [0, n={n}], got {correct}.")
    if isinstance(z, bool) or not isinstance(z, int | float) or not math.isfinite(z) or z <= 0:
        raise ValueError(f"wilson_interval: z must be a finite number > 0, got {z!r}.")
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def wilson_interval_percent(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """:func:`wilson_interval` in percent (0–100), the unit of the reported accuracies."""
    low, high = wilson_interval(correct, n, z)
    return 100.0 * low, 100.0 * high
