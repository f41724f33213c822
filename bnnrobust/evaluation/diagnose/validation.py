"""Argument validators of the diagnosis: each returns the cleaned value or raises a ValueError
that names the argument and the value it got."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def finite_number(name: str, value: Any, *, positive: bool = True) -> float:
    """``value`` as a float; it must be a finite int or float (not a bool), and > 0 if
    ``positive``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return float(value)


def integer(name: str, value: Any) -> int:
    """``value`` itself; it must be an int (not a bool)."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` itself; it must be an int >= 1 (not a bool)."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def positive_ints(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    """The distinct entries of ``values``, sorted; there must be at least one, each an int >= 1."""
    vals = tuple(values)
    if not vals or not all(_is_int(v) and v >= 1 for v in vals):
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 1, got {values!r}.")
    return tuple(sorted(set(vals)))


def positive_numbers(name: str, values: Iterable[Any]) -> tuple[float, ...]:
    """The distinct entries of ``values`` as floats, sorted; at least one, each finite and > 0."""
    vals = tuple(sorted({finite_number(f"{name} entry", v) for v in values}))
    if not vals:
        raise ValueError(f"{name} must hold at least one positive number.")
    return vals
