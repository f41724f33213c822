"""Pluggable binarizers, binary layers and model conversion.

``binarize(model, "md_tanh_s")`` turns any model into a BNN; ``make_binarizer("bc")`` builds a
binarizer by name; ``binary_modules(model)`` lists a model's binary layers;
``binary_summary(model)`` reports binary vs float parameters. See ``docs/models.md``.
"""

import sys as _sys
import types as _types
from typing import Any as _Any

from bnnrobust.binarize.binarizers import (
    BC,
    BINARIZERS,
    Binarizer,
    GDTanh,
    Hubara,
    MDTanhS,
    NoBinarizer,
    make_binarizer,
)
from bnnrobust.binarize.convert import binarize, binary_modules, sign_activations
from bnnrobust.binarize.functions import SURROGATES, hard_sign
from bnnrobust.binarize.layers import BinaryConv2d, BinaryLinear, SignActivation
from bnnrobust.binarize.summary import binary_stats, binary_summary

__all__ = [
    "BC",
    "BINARIZERS",
    "Binarizer",
    "BinaryConv2d",
    "BinaryLinear",
    "GDTanh",
    "Hubara",
    "MDTanhS",
    "NoBinarizer",
    "SURROGATES",
    "SignActivation",
    "binarize",
    "binary_modules",
    "binary_stats",
    "binary_summary",
    "hard_sign",
    "make_binarizer",
    "sign_activations",
]


# ``bnnrobust.binarize`` is both this package and, per the public API, the function
# ``bnnrobust.binarize(model, ...)``: once the package is imported, Python binds the attribute
# of ``bnnrobust`` to the module, so the module itself forwards calls to :func:`binarize`.
class _CallableModule(_types.ModuleType):
    def __call__(self, *args: _Any, **kwargs: _Any) -> _Any:
        return binarize(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
