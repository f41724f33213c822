"""Attack-time surrogate gradients for sign activations.

A binary network's sign activation has zero derivative almost everywhere; training uses a
straight-through estimator (STE). An attacker may choose a different backward — the forward
pass (the network's decisions) is never changed. Sign activations
(``bnnrobust.binarize.layers.SignActivation``) carry two attributes that this module sets:
``attack_surrogate: str | None`` (None = the training STE) and ``surrogate_kwargs: dict``.
Any module with an ``attack_surrogate`` attribute is treated as a sign activation (duck
typing; this module does not import ``bnnrobust.binarize``).

Names (``d s(x)/dx`` used in the backward):

* ``"ste_clipped"`` — ``1[|x| <= 1]`` (the training default);
* ``"ste_identity"`` — 1 everywhere;
* ``"approx_sign"`` — ``2 − 2|x|`` on ``|x| <= 1``, else 0 (Bi-Real Net);
* ``"tanh"`` / ``"tanh:k"`` — derivative of ``tanh(k x)``, slope ``k > 0`` (default 5);
* ``"swish_sign"`` / ``"swish_sign:b"`` — derivative of SignSwish with ``β = b > 0`` (default 5).

``None`` keeps whatever the model uses (normally the training STE).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

#: accepted surrogate names (``"tanh"`` and ``"swish_sign"`` take an optional ``:value``)
SURROGATES: tuple[str, ...] = ("ste_clipped", "ste_identity", "approx_sign", "tanh", "swish_sign")

_PARAM_KEY = {"tanh": "slope", "swish_sign": "beta"}


def _error(name: object) -> str:
    return (
        f"Unknown attack surrogate {name!r}; accepted: None (the model's training STE), "
        f"{', '.join(repr(s) for s in SURROGATES)}, with an optional parameter for "
        "'tanh:<slope>' and 'swish_sign:<beta>' (e.g. 'tanh:5')."
    )


def parse_surrogate(name: str) -> tuple[str, dict[str, Any]]:
    """Split ``"tanh:5"`` into ``("tanh", {"slope": 5.0})``; raise ValueError if unknown."""
    if not isinstance(name, str):
        raise ValueError(_error(name))
    base, sep, arg = name.strip().lower().partition(":")
    if base not in SURROGATES:
        raise ValueError(_error(name))
    if not sep:
        return base, {}
    if base not in _PARAM_KEY:
        raise ValueError(f"Surrogate {base!r} takes no parameter, got {name!r}. " + _error(name))
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(
            f"Surrogate parameter in {name!r} must be a number > 0, e.g. '{base}:5'."
        ) from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"Surrogate parameter in {name!r} must be a finite number > 0.")
    return base, {_PARAM_KEY[base]: value}


def check_surrogate_name(name: str | None) -> str | None:
    """Validate a surrogate spec (None or a name of :data:`SURROGATES`, optional ``:value``)."""
    if name is not None:
        parse_surrogate(name)
    return name


def sign_modules(model: nn.Module) -> list[nn.Module]:
    """Every submodule with an ``attack_surrogate`` attribute (the sign activations)."""
    return [m for m in model.modules() if hasattr(m, "attack_surrogate")]


@contextlib.contextmanager
def use_surrogate(model: nn.Module, name: str | None) -> Iterator[nn.Module]:
    """Use the surrogate ``name`` in every sign activation of ``model`` inside the block.

    Sets ``attack_surrogate`` and ``surrogate_kwargs`` on each such module and restores the
    previous values on exit (also on error). ``None`` changes nothing. Warns when ``model``
    has no sign activation (the surrogate then has no effect).
    """
    if name is None:
        yield model
        return
    base, kwargs = parse_surrogate(name)
    modules = sign_modules(model)
    if not modules:
        warnings.warn(
            f"Attack surrogate {name!r} requested, but the model {type(model).__name__} has no "
            "sign activation (no module with an 'attack_surrogate' attribute); the surrogate has "
            "no effect (binary weights alone do not need one).",
            stacklevel=3,
        )
    saved = [(m, m.attack_surrogate, getattr(m, "surrogate_kwargs", None)) for m in modules]
    try:
        for m in modules:
            setattr(m, "attack_surrogate", base)  # noqa: B010 - duck-typed attributes
            setattr(m, "surrogate_kwargs", dict(kwargs))  # noqa: B010
        yield model
    finally:
        for m, old_name, old_kwargs in saved:
            setattr(m, "attack_surrogate", old_name)  # noqa: B010
            if old_kwargs is None:
                if hasattr(m, "surrogate_kwargs"):
                    delattr(m, "surrogate_kwargs")
            else:
                setattr(m, "surrogate_kwargs", old_kwargs)  # noqa: B010
