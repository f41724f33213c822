"""Signal-propagation metrics (paper Table 12) and the Hessian-norm curve (paper Fig. 3).

No Lightning here: functions take an ``nn.Module`` and tensors. ``hessian_curve`` (which
imports matplotlib) is loaded on first use.
"""

from __future__ import annotations

from typing import Any

from bnnrobust.metrics.signal import (
    QUANTITIES,
    SUMMARY_KEYS,
    QuantityStats,
    SignalStats,
    SignalSums,
    default_betas,
    format_table,
    signal_propagation,
    signal_sums,
)

__all__ = [
    "QUANTITIES",
    "SUMMARY_KEYS",
    "QuantityStats",
    "SignalStats",
    "SignalSums",
    "default_betas",
    "format_table",
    "signal_propagation",
    "signal_sums",
    "hessian_curve",
]


def __getattr__(name: str) -> Any:
    if name == "hessian_curve":
        import importlib

        return importlib.import_module("bnnrobust.metrics.hessian_curve")
    raise AttributeError(f"module 'bnnrobust.metrics' has no attribute {name!r}")
