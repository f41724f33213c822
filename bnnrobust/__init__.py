"""bnnrobust: train binary neural networks and measure how robust they really are.

Public API (imported lazily so that ``import bnnrobust`` stays cheap):
``create_model``, ``list_models``, ``binarize_model``, ``evaluate_robustness`` (one-call
clean + robust accuracy with an AutoAttack-style log) and the ``attacks`` package.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": ("bnnrobust.models", "create_model"),
    "list_models": ("bnnrobust.models", "list_models"),
    "binarize_model": ("bnnrobust.binarize", "binarize_model"),
    "evaluate_robustness": ("bnnrobust.evaluation.api", "evaluate_robustness"),
}

__all__ = ["create_model", "list_models", "binarize_model", "evaluate_robustness", "attacks",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in {"attacks", "models", "metrics", "data", "systems", "evaluation"}:
        return importlib.import_module(f"bnnrobust.{name}")
    raise AttributeError(f"module 'bnnrobust' has no attribute {name!r}")
