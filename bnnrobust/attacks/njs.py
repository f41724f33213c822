"""NJS (Network Jacobian Scaling, paper §5.1) and Proposition 1: the numbers behind the rules.

* :func:`njs_temperature` / :func:`calibrate_njs`: ``β1 = 1 / μ``, μ the mean singular value
  of the input Jacobian over clean reference samples;
* :func:`njs_beta2`: the per-step ``β2`` of already β1-scaled logits;
* :func:`njs_bound` and :func:`prop1_beta`: Proposition 1's bound ``−log(ρ / ((d−1)(1−ρ)))``
  and the temperature it gives per sample.

The temperature rules that use them (:class:`~bnnrobust.attacks.temperature.NJS`,
:class:`~bnnrobust.attacks.temperature.Prop1Temperature`) and the notation are in
:mod:`bnnrobust.attacks.temperature`, which re-exports these functions.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import eval_mode
from bnnrobust.attacks.jacobian import (
    check_jacobian_space,
    gram_from_jacobian,
    input_jacobian_and_logits,
    singular_values_from_gram,
    to_jacobian_space,
)
from bnnrobust.validation import positive_int

__all__ = [
    "calibrate_njs",
    "njs_beta2",
    "njs_bound",
    "njs_temperature",
    "prop1_beta",
]


def njs_temperature(
    model: nn.Module,
    x_ref: Tensor,
    n_jsv: int = 100,
    *,
    chunk_size: int = 32,
    jacobian_space: str = "normalized",
) -> float:
    """NJS's ``β1 = 1 / μ``, μ the mean singular value of ``J(x_i)`` over ``x_ref[:n_jsv]``.

    ``jacobian_space="normalized"`` (default, the authors' convention) takes J with respect to
    the tensor after the model's ``Normalize``; ``"pixel"`` with respect to the [0, 1] image
    (β1 smaller by the std for one channel). Without a ``Normalize`` both give the same value.
    The model is put in eval mode for the computation (each submodule's flag is restored).
    All ``min(d, N)`` singular values of every sample are averaged. A model whose Jacobian is
    zero everywhere on ``x_ref`` gives β1 = 1 (with a warning): no scaling can help it.
    """
    positive_int("n_jsv", n_jsv)
    check_jacobian_space(jacobian_space)
    if x_ref.shape[0] == 0:
        raise ValueError("njs_temperature needs at least one reference sample, got an empty batch.")
    x_ref = x_ref[:n_jsv].detach()
    with eval_mode(model):
        jac, _ = input_jacobian_and_logits(model, x_ref, chunk_size=chunk_size)
    jac = to_jacobian_space(jac, model, jacobian_space)
    sv = singular_values_from_gram(gram_from_jacobian(jac), jac.shape[-1])
    mu = float(sv.mean())
    if not math.isfinite(mu):
        raise ValueError(
            f"NJS: the mean Jacobian singular value of {type(model).__name__} is {mu}; "
            "the model produces non-finite gradients."
        )
    if mu <= 0.0:
        warnings.warn(
            f"NJS: the input Jacobian of {type(model).__name__} is zero on all {x_ref.shape[0]} "
            "reference samples; using beta1 = 1.",
            stacklevel=2,
        )
        return 1.0
    return 1.0 / mu


#: NJS's β1 for a model on clean reference samples: the name under which the evaluation runner,
#: the adversarial trainer and ``NJS.calibrate`` call :func:`njs_temperature` (same function).
calibrate_njs = njs_temperature


def njs_bound(d: int, rho: float) -> float:
    """Proposition 1: ``−log(ρ / ((d−1)(1−ρ)))`` (to be divided by γ = a1 − ad)."""
    if d < 2:
        raise ValueError(f"Temperature scaling needs at least 2 classes, the model has d={d}.")
    ratio = rho / ((d - 1) * (1.0 - rho))
    if not 0.0 < ratio < 1.0:
        raise ValueError(
            f"NJS rho must satisfy 0 < rho < (d-1)/d = {(d - 1) / d:.4g} for d={d}, got {rho!r}."
        )
    return -math.log(ratio)


def njs_beta2(z: Tensor, y: Tensor, rho: float = 0.01) -> Tensor:
    """NJS's per-step ``β2`` (B,) for already β1-scaled logits ``z`` (B, d); no gradient.

    ``β2 = −log(ρ / ((d−1)(1−ρ))) / γ`` with ``γ = max(z) − min(z)`` where ``p_y > 1 − ρ``,
    else 1. ``γ = 0`` or non-finite logits give 1 (never NaN/inf).
    """
    with torch.no_grad():
        zf = z.detach()
        if zf.dtype in (torch.float16, torch.bfloat16):
            zf = zf.float()
        p_y = torch.softmax(zf, dim=1).gather(1, y.long()[:, None]).squeeze(1)
        # p_y > 1 - rho >= 1/2 implies gamma > 0; NaN logits fail the comparison
        return prop1_beta(zf, rho, p_y > 1.0 - rho)


def prop1_beta(z: Tensor, rho: float, where: Tensor) -> Tensor:
    """``−log(ρ / ((d−1)(1−ρ))) / (max(z) − min(z))`` (B,) where ``where``, else 1; also 1 for
    ``γ = 0`` and non-finite logits. ``z`` (B, d) detached, float32/64."""
    bound = njs_bound(z.shape[1], rho)  # checks 0 < rho < (d-1)/d
    lo, hi = torch.aminmax(z, dim=1)
    beta = torch.where(where, bound / (hi - lo), 1.0)
    return torch.where(torch.isfinite(beta) & (beta > 0), beta, 1.0)
