"""Argument validators: each returns the cleaned value or raises a ValueError (TypeError for a
value of the wrong kind) that names the argument and the value it got, so every constructor
and command reports bad input in the same words. ``prefix`` puts the owner in front of the
message (e.g. ``"CLEVER "``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["check_int", "check_number", "check_positive", "finite_number", "integer",
           "positive_int", "positive_ints", "positive_numbers", "unwritable_reason",
           "check_pixel_images"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise a clear ValueError unless ``value`` > 0 (or >= 0 with ``allow_zero``)."""
    bad = value < 0 if allow_zero else value <= 0
    if bad or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


def check_int(name: str, value: Any, minimum: int = 1, *, allow_none: bool = False,
              integral_float: bool = False, prefix: str = "") -> Any:
    """``value`` as an int >= ``minimum`` (not a bool); ``None`` passes with ``allow_none``;
    ``integral_float`` also accepts floats with an integer value (``5000.0``)."""
    if value is None and allow_none:
        return None
    ok = _is_int(value) or (integral_float and isinstance(value, float) and value.is_integer())
    if not ok or value < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{prefix}{name} must be an integer >= {minimum}{extra}, got {value!r}.")
    return int(value)


def check_number(name: str, value: Any, *, allow_zero: bool = False, prefix: str = "") -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``); a non-number is a TypeError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{prefix}{name} must be a number, got {value!r}.")
    check_positive(prefix + name, float(value), allow_zero=allow_zero)
    if not math.isfinite(value):
        raise ValueError(f"{prefix}{name} must be finite, got {value!r}.")
    return float(value)


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


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` cannot hold output files (created if missing), or None when it can; a
    probe file is written and removed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".bnnrobust_write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        return str(err.strerror or err)
    return None


def check_pixel_images(x: Any, start: int) -> None:
    """Evaluation images must be floating point in [0, 1] (normalization belongs inside the
    model); ``start`` is the batch's first sample number, named in the error."""
    if not x.is_floating_point():
        raise TypeError(f"evaluate: images must be floating point in [0, 1], got dtype {x.dtype} "
                        f"(batch starting at sample {start}).")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(
            f"evaluate: images must lie in [0, 1] pixel units (normalization belongs inside the "
            f"model), but the batch starting at sample {start} has values in [{lo:.4g}, {hi:.4g}]. "
            "Remove any Normalize transform from the data pipeline."
        )
