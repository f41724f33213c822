"""Pluggable binarizers, binary layers and model conversion.

``binarize_model(model, "md_tanh_s")`` turns any model into a BNN; ``make_binarizer("bc")`` builds a
binarizer by name; ``binary_modules(model)`` lists a model's binary layers;
``binary_summary(model)`` reports binary vs float parameters. See ``docs/models.md``.
"""

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
from bnnrobust.binarize.convert import binarize_model, binary_modules, sign_activations
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
    "binarize_model",
    "binary_modules",
    "binary_stats",
    "binary_summary",
    "hard_sign",
    "make_binarizer",
    "sign_activations",
]
