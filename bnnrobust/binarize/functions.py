"""Autograd functions behind the binarizers and sign activations.

Every function here is an explicit ``torch.autograd.Function`` with its own backward, so
the surrogate gradient is visible in one place (no ``.data`` overwriting tricks).

Conventions (see ``docs/models.md``):

* ``sign(0) = +1`` everywhere (``torch.sign(0) = 0`` is a bug for BNNs).
* ``SignSurrogate`` is the sign activation of Hubara et al.; its forward is always exactly
  ``hard_sign(x)`` and its backward is the surrogate named in ``SURROGATES``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = [
    "SURROGATES",
    "TRAINING_SURROGATE",
    "hard_sign",
    "ClippedSTESign",
    "IdentitySTESign",
    "TanhSTE",
    "SignSurrogate",
    "surrogate_grad",
    "check_surrogate",
]

#: Names of the backward passes a :class:`~bnnrobust.binarize.SignActivation` accepts for
#: attacks. ``"ste_clipped"`` is also the training STE.
SURROGATES: tuple[str, ...] = ("ste_clipped", "ste_identity", "approx_sign", "tanh", "swish_sign")

#: The surrogate used when ``attack_surrogate is None`` (training and plain evaluation).
TRAINING_SURROGATE = "ste_clipped"

_DEFAULT_PARAM = {"tanh": 5.0, "swish_sign": 5.0}


def hard_sign(x: Tensor) -> Tensor:
    """Return ``+1`` where ``x >= 0`` and ``-1`` elsewhere, in ``x``'s dtype (sign(0) = +1)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class ClippedSTESign(Function):
    """``w = sign(u)``; backward ``∂L/∂u = ∂L/∂w · 1[|u| <= 1]`` (BinaryConnect)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor) -> Tensor:
        ctx.save_for_backward(u)
        return hard_sign(u)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (u,) = ctx.saved_tensors
        return grad * (u.abs() <= 1).to(grad.dtype)


class IdentitySTESign(Function):
    """``w = sign(u)``; backward ``∂L/∂u = ∂L/∂w`` (plain straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor) -> Tensor:
        return hard_sign(u)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class TanhSTE(Function):
    """``w = tanh(s·u)``; backward ``∂L/∂u = ∂L/∂w`` (MD-tanh-S: full straight-through).

    ``scale`` (s, the annealed ``tanh_scale``) is a 0-d tensor or a float and gets no gradient.
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, scale: Tensor | float) -> Tensor:
        return torch.tanh(u * scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def surrogate_grad(x: Tensor, name: str, param: float | None = None) -> Tensor:
    """Derivative ``d s(x)/dx`` of the surrogate ``name`` evaluated at ``x`` (no chain factor).

    ``param`` is the slope k of ``"tanh"`` or the β of ``"swish_sign"`` (default 5).
    """
    if name == "ste_clipped":
        return (x.abs() <= 1).to(x.dtype)
    if name == "ste_identity":
        return torch.ones_like(x)
    if name == "approx_sign":
        return (2 - 2 * x.abs()).clamp_min(0)
    if name == "tanh":
        k = _DEFAULT_PARAM["tanh"] if param is None else float(param)
        t = torch.tanh(k * x)
        return k * (1 - t * t)
    if name == "swish_sign":
        b = _DEFAULT_PARAM["swish_sign"] if param is None else float(param)
        s = torch.sigmoid(b * x)
        # d/dx [2σ(bx)(1 + bx(1 − σ(bx))) − 1] = 2b σ(1−σ) (2 + bx(1 − 2σ))
        return 2 * b * s * (1 - s) * (2 + b * x * (1 - 2 * s))
    raise ValueError(_surrogate_error(name))


class SignSurrogate(Function):
    """Forward ``hard_sign(x)``; backward ``grad · surrogate_grad(x, name, param)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, name: str, param: float | None) -> Tensor:
        ctx.save_for_backward(x)
        ctx.name = name
        ctx.param = param
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.name, ctx.param).to(grad.dtype), None, None


def _surrogate_error(name: object) -> str:
    return (
        f"Unknown sign surrogate {name!r}. Accepted surrogates: {', '.join(SURROGATES)} "
        "(or None for the training STE, which is 'ste_clipped')."
    )


def check_surrogate(name: str | None, kwargs: dict[str, Any] | None = None) -> float | None:
    """Validate a surrogate name and its kwargs; return the numeric parameter (or None).

    ``"tanh"`` accepts ``slope`` (k > 0), ``"swish_sign"`` accepts ``beta`` (β > 0); the other
    surrogates accept no kwargs. Raises ``ValueError`` naming the bad value otherwise.
    """
    kwargs = dict(kwargs or {})
    if name is None:
        return None
    if name not in SURROGATES:
        raise ValueError(_surrogate_error(name))
    accepted = {"tanh": "slope", "swish_sign": "beta"}.get(name)
    extra = sorted(k for k in kwargs if k != accepted)
    if extra:
        raise ValueError(
            f"Surrogate {name!r} does not accept {extra}; accepted kwargs: "
            f"{[accepted] if accepted else 'none'}."
        )
    if accepted is None or accepted not in kwargs:
        return _DEFAULT_PARAM.get(name)
    value = float(kwargs[accepted])
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"Surrogate {name!r} needs {accepted} > 0 (finite), got {value!r}.")
    return value
