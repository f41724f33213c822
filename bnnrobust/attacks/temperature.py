"""Temperature scaling of the logits for gradient attacks (PGD++ / FGSM++ / APGD++).

A gradient attack on a binary network often sees all-zero input gradients: the softmax
saturates (``p_y = 1`` in floating point), so the error signal ``ψ = p − onehot(y)``
vanishes. Scaling the logits by a temperature ``β > 0`` leaves every decision unchanged
(argmax is invariant) but can bring the softmax back into its sensitive range. Notation
(see ``algorithms.md``): ``f(x)`` logits (d classes), ``J = ∂f/∂x`` (d × N),
``p(β) = softmax(β f)``, ``S(β) = diag(p) − p pᵀ``.

Rules (one class each, all reusable by any gradient attack through the same two calls):

* :class:`FixedTemperature` — a given β for every sample and step.
* :class:`NJS` (Network Jacobian Scaling) — ``β1 = 1 / μ`` with μ the mean of all singular
  values of ``J(x_i)`` over the first ``n_jsv`` clean samples (model in eval mode). At every
  step and per sample, with ``z = β1 f(x_t)``, ``p = softmax(z)``, ``γ = max(z) − min(z)``:
  if ``p_y > 1 − ρ`` then ``z ← β2 z`` with ``β2 = −log(ρ / ((d−1)(1−ρ))) / γ`` (a constant,
  no gradient), else ``β2 = 1``. By Proposition 1 this bound is the largest temperature that
  keeps ``1 − p_y`` near ρ. ``γ = 0`` (all logits equal) gives ``β2 = 1``.
* :class:`Prop1Temperature` — Proposition 1's bound alone, per sample and step:
  ``β = −log(ρ / ((d−1)(1−ρ))) / γ`` (paper Table 13).
* :class:`HNS` (Hessian Norm Scaling) — per sample, once at the random-start point:
  ``γ = z_top1 − z_top2`` of the unscaled logits, ``β(ε) = −log(ε / ((1−ε)(d−1))) / γ``, a grid
  of ``n_grid`` β linearly spaced from ``β(1 − 1/d − 0.01)`` to ``β(eps_min = 1e−72)``, each
  scored by ``‖H(β)‖_F`` with ``H(β) = β² Jᵀ S(β) J`` (exact for piecewise-linear nets), and
  ``β* = argmax``. Fallback ``β* = 1`` for misclassified samples, ties (``γ = 0``), an argmax
  at the first or last grid point, and non-finite scores. The norm uses the d×d Gram matrix
  ``G = J Jᵀ``: ``‖Jᵀ S J‖_F² = tr(S G S G)`` — no N×N matrix is ever formed.

Protocol used by the attacks::

    t = t.prepare(model, x_clean)        # once per call: the rule for this call (NJS without
                                         # a fixed β1 returns a copy calibrated on clean x)
    state = t.start(model, x_start, y)   # once per run/restart, at the random-start point
    scaled, beta = t.scale(model(x_t), y, state)   # every step; loss on ``scaled``
"""

from __future__ import annotations

import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import check_labels, check_positive, eval_mode
from bnnrobust.attacks.jacobian import (
    check_jacobian_space,
    gram_from_jacobian,
    input_jacobian_and_logits,
    singular_values_from_gram,
    to_jacobian_space,
)

__all__ = [
    "HNS",
    "NJS",
    "TEMPERATURE_NAMES",
    "FixedTemperature",
    "Prop1Temperature",
    "Temperature",
    "TemperatureState",
    "calibrate_njs",
    "hessian_norm",
    "hns_beta_from_gram",
    "hns_temperature",
    "make_temperature",
    "njs_beta2",
    "njs_temperature",
]


@dataclass
class TemperatureState:
    """What :meth:`Temperature.start` hands to :meth:`Temperature.scale` for one run.

    Attributes:
        beta: (B,) base temperature per sample (fixed β, NJS's β1, HNS's β*), float32/64.
        info: optional per-sample extras, e.g. HNS's ``"hns_fallback"`` (bool, (B,)).
    """

    beta: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


class Temperature(ABC):
    """A rule that scales the logits before the attack loss. See the module docstring."""

    #: short name used in attack names (``"pgd++" + name``)
    name: str = "temperature"

    def prepare(self, model: nn.Module, x_clean: Tensor) -> Temperature:
        """The rule to use for one attack call on the clean batch ``x_clean`` (default: self).

        Rules that need a per-model value (NJS's β1) return a calibrated copy and leave
        ``self`` unchanged, so nothing is remembered between calls."""
        return self

    @abstractmethod
    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        """Once per attack run (restart), at the random-start point ``x``; model in eval mode."""

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        """Return ``(β·logits, β)`` with β (B,) detached; gradients flow through ``logits`` only."""
        beta = state.beta.to(device=logits.device)
        return logits * beta.to(logits.dtype)[:, None], beta.detach()

    def describe(self) -> dict[str, object]:
        """JSON-serializable description."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class FixedTemperature(Temperature):
    """The same temperature ``beta > 0`` for every sample and step."""

    def __init__(self, beta: float) -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float):
            raise TypeError(f"FixedTemperature needs a number beta > 0, got {beta!r}.")
        check_positive("Temperature beta", float(beta))
        if not math.isfinite(beta):
            raise ValueError(f"Temperature beta must be finite, got {beta!r}.")
        self.beta = float(beta)
        self.name = f"beta{self.beta:g}"

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        return TemperatureState(torch.full((x.shape[0],), self.beta, device=x.device))

    def describe(self) -> dict[str, object]:
        return {"name": "fixed", "beta": self.beta}


# ----------------------------------------------------------------------------- NJS


def _check_n(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


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
    _check_n("n_jsv", n_jsv)
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


def calibrate_njs(
    model: nn.Module,
    x_ref: Tensor,
    n_jsv: int = 100,
    *,
    chunk_size: int = 32,
    jacobian_space: str = "normalized",
) -> float:
    """NJS's β1 for ``model`` on the clean reference samples ``x_ref[:n_jsv]``: the one
    function the evaluation runner, the adversarial trainer, the robustness monitor and
    ``NJS.calibrate`` use. Same arguments and value as :func:`njs_temperature`."""
    return njs_temperature(model, x_ref, n_jsv, chunk_size=chunk_size,
                           jacobian_space=jacobian_space)


def _check_beta1(beta1: float) -> float:
    if isinstance(beta1, bool) or not isinstance(beta1, int | float) \
            or not math.isfinite(beta1) or beta1 <= 0:
        raise ValueError(f"NJS beta1 must be a finite number > 0, got {beta1!r}.")
    return float(beta1)


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
        return _prop1_beta(zf, rho, p_y > 1.0 - rho)


def _prop1_beta(z: Tensor, rho: float, where: Tensor) -> Tensor:
    """``−log(ρ / ((d−1)(1−ρ))) / (max(z) − min(z))`` (B,) where ``where``, else 1; also 1 for
    ``γ = 0`` and non-finite logits. ``z`` (B, d) detached, float32/64."""
    bound = njs_bound(z.shape[1], rho)  # checks 0 < rho < (d-1)/d
    lo, hi = torch.aminmax(z, dim=1)
    beta = torch.where(where, bound / (hi - lo), 1.0)
    return torch.where(torch.isfinite(beta) & (beta > 0), beta, 1.0)


class NJS(Temperature):
    """Network Jacobian Scaling (paper §5.1): β1 from Jacobian singular values, β2 per step.

    Args:
        n_jsv: number of clean samples whose Jacobian singular values define β1.
        rho: lower bound on ``1 − p_y`` targeted by β2 (0 < ρ < (d−1)/d).
        beta1: a fixed β1 > 0 (e.g. from :func:`calibrate_njs`); None: calibrate per call.
        chunk_size: samples per Jacobian forward (memory ∝ ``chunk_size * d``).
        jacobian_space: ``"normalized"`` (default: J with respect to the tensor after the
            model's ``Normalize``, as the authors' code does) or ``"pixel"`` ([0, 1] image).

    β1 is explicit: it is the ``beta1`` given here or set by :meth:`calibrate` (kept until
    :meth:`reset`), and ``describe()`` reports it. With ``beta1=None`` every attack call
    computes β1 afresh on the first ``n_jsv`` samples of its clean batch (:meth:`prepare`
    returns a calibrated copy; nothing is remembered, so no value can go stale when the
    weights change). The evaluation runner, the adversarial trainer and the robustness
    monitor calibrate explicitly on their reference samples.
    """

    name = "njs"

    def __init__(
        self,
        n_jsv: int = 100,
        rho: float = 0.01,
        *,
        beta1: float | None = None,
        chunk_size: int = 32,
        jacobian_space: str = "normalized",
    ) -> None:
        self.n_jsv = _check_n("n_jsv", n_jsv)
        self.jacobian_space = check_jacobian_space(jacobian_space)
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 < rho < 0.5:
            raise ValueError(f"NJS rho must be a number in (0, 0.5), got {rho!r}.")
        self.rho = float(rho)
        #: ``"njs"``; ``"njs_rho<ρ>"`` for a non-default ρ, ``"..._pixel"`` for pixel-space J,
        #: so attack names stay distinct
        self.name = "njs" if self.rho == 0.01 else f"njs_rho{self.rho:g}"
        if self.jacobian_space == "pixel":
            self.name += "_pixel"
        self.chunk_size = _check_n("chunk_size", chunk_size)
        self.beta1: float | None = None if beta1 is None else _check_beta1(beta1)

    def calibrate(self, model: nn.Module, x_ref: Tensor) -> float:
        """Set β1 from ``x_ref[:n_jsv]`` (clean samples) and return it; kept until :meth:`reset`."""
        self.beta1 = calibrate_njs(model, x_ref, self.n_jsv, chunk_size=self.chunk_size,
                                   jacobian_space=self.jacobian_space)
        return self.beta1

    def reset(self) -> None:
        """Forget β1 (attack calls then calibrate per call again)."""
        self.beta1 = None

    @property
    def calibrated(self) -> bool:
        return self.beta1 is not None

    def with_beta1(self, beta1: float) -> NJS:
        """A copy of this rule with β1 fixed to ``beta1``."""
        return NJS(self.n_jsv, self.rho, beta1=beta1, chunk_size=self.chunk_size,
                   jacobian_space=self.jacobian_space)

    def prepare(self, model: nn.Module, x_clean: Tensor) -> NJS:
        if self.beta1 is not None:
            return self
        return self.with_beta1(calibrate_njs(model, x_clean, self.n_jsv,
                                             chunk_size=self.chunk_size,
                                             jacobian_space=self.jacobian_space))

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        # an uncalibrated rule used without prepare(): β1 from this run's start batch
        beta1 = self.beta1 if self.beta1 is not None else self.prepare(model, x).beta1
        assert beta1 is not None
        return TemperatureState(torch.full((x.shape[0],), beta1, device=x.device))

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        beta1 = state.beta.to(device=logits.device)
        z = logits * beta1.to(logits.dtype)[:, None]
        beta2 = njs_beta2(z, y, self.rho)
        return z * beta2.to(z.dtype)[:, None], (beta1 * beta2.to(beta1.dtype)).detach()

    def describe(self) -> dict[str, object]:
        return {"name": "njs", "n_jsv": self.n_jsv, "rho": self.rho,
                "jacobian_space": self.jacobian_space, "beta1": self.beta1}


# ----------------------------------------------------------------------------- HNS


#: elements of the largest (rows, d, d) float64 temporary of :func:`_sqrt_tr_sgsg` (32 MiB)
_TR_CHUNK_ELEMENTS = 1 << 22


def _reference_gram(gram: Tensor, ref: Tensor) -> Tensor:
    """The Gram matrix of the rows ``J_a − J_r`` (B, d, d) from ``G = J Jᵀ`` (B, d, d).

    ``G'_ab = G_ab − G_ar − G_rb + G_rr`` with ``r = ref`` (B,); row and column r are exactly 0.
    ``S 1 = 0`` makes ``tr(S G S G) = tr(S G' S G')``.
    """
    n, d, _ = gram.shape
    row = gram.gather(1, ref.view(n, 1, 1).expand(n, 1, d))  # (B, 1, d): G_r·
    out = gram - row - row.transpose(1, 2) + row.gather(2, ref.view(n, 1, 1))
    keep = torch.ones(n, d, dtype=torch.bool, device=gram.device)
    keep.scatter_(1, ref.view(n, 1), False)
    return torch.where(keep[:, :, None] & keep[:, None, :], out, torch.zeros_like(out))


def _sqrt_tr_sgsg(gram_ref: Tensor, z: Tensor, beta: Tensor, ref: Tensor) -> Tensor:
    """``sqrt(tr(S G S G))`` (B, K) float64 for ``S = diag(p) − p pᵀ``, ``p = softmax(β z)``.

    Args: ``gram_ref`` (B, d, d) from :func:`_reference_gram`, ``z`` (B, d) logits, ``beta``
    (B, K), ``ref`` (B,) the top class r of each sample (the largest p at every β > 0).

    Free of cancellation, also in the saturated tail (``1 − p_r`` far below float64's 1e-16):
    with ``q`` the softmax of ``β z`` over the classes other than r (``q_r = 0``),
    ``σ = 1 − p_r = Σ_{a≠r} p_a`` (from log-sum-exps, never as ``1 − p_r``), ``u = G' q``,
    ``s = qᵀ G' q``, ``p = p_r e_r + σ q`` and the p-centred Gram ``C`` of the rows ``J_a − J_r``
    give ``tr(SGSG) = Σ_ab p_a p_b C_ab² = σ² T`` with

        T = Σ_ab q_a q_b C'_ab² + 2 p_r σ Σ_b q_b (u_b − σ s)² + (p_r σ s)²,
        C' = G' − σ (u 1ᵀ + 1 uᵀ) + σ² s 1 1ᵀ,

    a sum of non-negative terms, each computed from small quantities directly. Returned as
    ``σ sqrt(T)`` (no underflow of ``σ²``). Memory: chunks of at most ``_TR_CHUNK_ELEMENTS``
    float64 values whatever B, K and d.
    """
    n, d = z.shape
    k = beta.shape[1]
    bz = beta[..., None] * z[:, None, :]  # (B, K, d)
    ref_idx = ref.view(n, 1, 1).expand(n, k, 1)
    others = bz.scatter(-1, ref_idx, float("-inf"))
    lse = torch.logsumexp(bz, dim=-1)
    p_r = torch.exp(bz.gather(-1, ref_idx).squeeze(-1) - lse)  # (B, K)
    sigma = torch.exp(torch.logsumexp(others, dim=-1) - lse)  # (B, K): 1 − p_r
    q = torch.softmax(others, dim=-1)  # (B, K, d); NaN only where sigma == 0 (d = 1, -inf logits)
    u = q @ gram_ref  # (B, K, d): (G' q)ᵀ, G' symmetric
    s = (q * u).sum(-1)  # (B, K)
    t2 = 2.0 * p_r * sigma * (q * (u - (sigma * s)[..., None]).square()).sum(-1)
    t3 = (p_r * sigma * s).square()
    v = sigma[..., None] * u
    c = sigma * sigma * s
    t1 = torch.empty_like(s)
    rows = max(1, min(n, _TR_CHUNK_ELEMENTS // (d * d)))
    cols = max(1, min(k, _TR_CHUNK_ELEMENTS // (rows * d * d)))
    for b0 in range(0, n, rows):
        g = gram_ref[b0 : b0 + rows, None]  # (rows, 1, d, d)
        for k0 in range(0, k, cols):
            part = (slice(b0, b0 + rows), slice(k0, k0 + cols))
            cm = g - v[part][..., :, None]
            cm.sub_(v[part][..., None, :]).add_(c[part][..., None, None]).square_()
            qq = q[part]
            t1[part] = ((cm @ qq[..., None]).squeeze(-1) * qq).sum(-1)
    out = sigma * (t1 + t2 + t3).sqrt()
    return torch.where(sigma == 0, torch.zeros_like(out), out)


def hessian_norm(
    jac: Tensor, logits: Tensor, beta: Tensor | float, *, is_gram: bool = False
) -> Tensor:
    """``‖β² Jᵀ S(β) J‖_F`` per sample (and per β), via ``tr(S G S G)`` with ``G = J Jᵀ``.

    This is the Frobenius norm of the input Hessian of ``CE(β f(x), y)`` for a
    piecewise-linear network (where ``∂J/∂x = 0``); it does not depend on y. Units: loss per
    squared input unit. Computed without cancellation (:func:`_sqrt_tr_sgsg`), so it stays
    accurate far into the saturated tail (relative error ~1e-12 where ``1 − max p`` is 1e-70).

    Args:
        jac: (B, d, N) Jacobians, or (B, d, d) Gram matrices ``J Jᵀ`` with ``is_gram=True``.
        logits: (B, d) unscaled logits at the same point.
        beta: a float, (B,) or (B, K) temperatures.

    Returns:
        float64 tensor shaped like ``beta`` broadcast to (B,) or (B, K).
    """
    z = logits.detach().double()
    ref = z.argmax(dim=1)
    if is_gram:
        gram_ref = _reference_gram(jac.detach().double(), ref)
    else:  # rows J_a − J_r straight from J: exact zeros at r, no Gram differences
        j = jac.detach().double()
        j_ref = j.gather(1, ref.view(-1, 1, 1).expand(-1, 1, j.shape[2]))
        gram_ref = gram_from_jacobian(j - j_ref)
    b = torch.as_tensor(beta, dtype=torch.float64, device=z.device)
    squeeze = b.dim() <= 1
    if b.dim() == 0:
        b = b.expand(z.shape[0])
    if b.dim() == 1:
        b = b[:, None]
    out = b * b * _sqrt_tr_sgsg(gram_ref.to(z.device), z, b, ref)
    return out[:, 0] if squeeze else out


def hns_grid(gamma: Tensor, d: int, n_grid: int = 100, eps_min: float = 1e-72) -> Tensor:
    """The HNS β grid (B, n_grid), linear in β from ``β(1 − 1/d − 0.01)`` to ``β(eps_min)``.

    ``β(ε) = −log(ε / ((1−ε)(d−1))) / γ``. Entries for γ ≤ 0 are meaningless (callers fall back).
    """
    eps_max = 1.0 - 1.0 / d - 0.01
    if not 0.0 < eps_min < eps_max:
        raise ValueError(f"HNS eps_min must lie in (0, {eps_max:.4g}) for d={d}, got {eps_min!r}.")

    def c(eps: float) -> float:
        return -math.log(eps / ((1.0 - eps) * (d - 1)))

    t = torch.linspace(0.0, 1.0, n_grid, dtype=torch.float64, device=gamma.device)
    cs = c(eps_max) + t * (c(eps_min) - c(eps_max))
    g = torch.where(gamma > 0, gamma.double(), torch.ones_like(gamma, dtype=torch.float64))
    return cs[None, :] / g[:, None]


def hns_beta_from_gram(
    gram: Tensor, logits: Tensor, y: Tensor, n_grid: int = 100, eps_min: float = 1e-72
) -> tuple[Tensor, Tensor]:
    """HNS's β* (B,) float64 and a fallback mask (B,) from Gram matrices and logits.

    Fully vectorized over batch and grid (memory O(B · n_grid · d)).
    """
    _check_n("n_grid", n_grid)
    if n_grid < 3:
        raise ValueError(f"HNS n_grid must be >= 3 (edges fall back to beta=1), got {n_grid}.")
    z = logits.detach().double()
    d = z.shape[1]
    if d < 2:
        raise ValueError(f"Temperature scaling needs at least 2 classes, the model has d={d}.")
    top2 = z.topk(2, dim=1).values
    gamma = top2[:, 0] - top2[:, 1]
    betas = hns_grid(gamma, d, n_grid, eps_min)  # (B, K)
    scores = hessian_norm(gram, z, betas, is_gram=True)  # (B, K)
    finite = torch.isfinite(scores).all(dim=1)
    idx = torch.nan_to_num(scores, nan=-1.0, posinf=-1.0).argmax(dim=1)
    beta_star = betas.gather(1, idx[:, None]).squeeze(1)
    correct = z.argmax(dim=1) == y.to(z.device).long()
    fallback = (
        ~correct
        | ~(gamma > 0)
        | ~torch.isfinite(gamma)
        | ~finite
        | (idx == 0)
        | (idx == n_grid - 1)
        | ~torch.isfinite(beta_star)
    )
    return torch.where(fallback, torch.ones_like(beta_star), beta_star), fallback


def hns_temperature(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    n_grid: int = 100,
    *,
    eps_min: float = 1e-72,
    chunk_size: int = 32,
) -> Tensor:
    """HNS's β* per sample at ``x`` (B,), in ``x``'s dtype. Model put in eval mode meanwhile.

    One batched Jacobian (one forward of ``x`` repeated d times, one backward per chunk),
    then the vectorized grid search of :func:`hns_beta_from_gram`.
    """
    return _hns(model, x, y, n_grid, eps_min, chunk_size)[0].to(x.dtype)


def _hns(
    model: nn.Module, x: Tensor, y: Tensor, n_grid: int, eps_min: float, chunk_size: int
) -> tuple[Tensor, Tensor]:
    if x.shape[0] == 0:
        empty = x.new_zeros((0,), dtype=torch.float64)
        return empty, empty.bool()
    with eval_mode(model):
        jac, logits = input_jacobian_and_logits(model, x.detach(), chunk_size=chunk_size)
    check_labels(logits, y)
    return hns_beta_from_gram(gram_from_jacobian(jac), logits, y, n_grid, eps_min)


class HNS(Temperature):
    """Hessian Norm Scaling (paper §5.2): β* per sample at the start point, fixed for the run.

    Args:
        n_grid: number of β grid points (linear in β).
        eps_min: the smallest ``ε = 1 − p_y`` of the grid (its largest β).
        chunk_size: samples per Jacobian forward (memory ∝ ``chunk_size * d``).
    """

    name = "hns"

    def __init__(self, n_grid: int = 100, eps_min: float = 1e-72, *, chunk_size: int = 32) -> None:
        self.n_grid = _check_n("n_grid", n_grid)
        if self.n_grid < 3:
            raise ValueError(f"HNS n_grid must be >= 3, got {n_grid}.")
        if not isinstance(eps_min, int | float) or not 0.0 < eps_min < 0.49:
            raise ValueError(f"HNS eps_min must be a number in (0, 0.49), got {eps_min!r}.")
        self.eps_min = float(eps_min)
        self.chunk_size = _check_n("chunk_size", chunk_size)

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        beta, fallback = _hns(model, x, y, self.n_grid, self.eps_min, self.chunk_size)
        return TemperatureState(beta.to(torch.float32), {"hns_fallback": fallback})

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "n_grid": self.n_grid, "eps_min": self.eps_min}


# ----------------------------------------------------------------------------- factory

# ----------------------------------------------------------------------------- Prop. 1


class Prop1Temperature(Temperature):
    """β from Proposition 1 alone (paper Table 13): per sample and step, no Jacobian factor.

    For a sample the current logits classify correctly, ``β = −log(ρ / ((d−1)(1−ρ))) / γ`` with
    ``γ = max(f) − min(f)`` of the unscaled logits: the temperature at which the top softmax
    probability is at most ``1 − ρ`` (reached when all other logits sit at the minimum).
    Unlike NJS's β2 it is applied at every step whatever ``p_y``. Misclassified samples,
    ``γ = 0`` and non-finite logits get β = 1.

    Args:
        rho: the bound on ``1 − p_y``, ``0 < ρ < (d−1)/d`` (the paper sweeps 1e-15 … 0.5).
    """

    def __init__(self, rho: float = 0.01) -> None:
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 < rho < 1.0:
            raise ValueError(
                f"Prop1Temperature rho must be a number in (0, (d-1)/d), got {rho!r}."
            )
        self.rho = float(rho)
        self.name = "prop1" if self.rho == 0.01 else f"prop1_rho{self.rho:g}"

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        return TemperatureState(torch.ones(x.shape[0], device=x.device))

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            zf = logits.detach().float()
            beta = _prop1_beta(zf, self.rho, zf.argmax(dim=1) == y.to(zf.device).long())
        return logits * beta.to(logits.dtype)[:, None], beta.detach()

    def describe(self) -> dict[str, object]:
        return {"name": "prop1", "rho": self.rho}


_NAMED: dict[str, type[Temperature]] = {"njs": NJS, "hns": HNS, "prop1": Prop1Temperature}
#: the dict form: {"name": <key>, <arguments>}; "fixed" takes "beta"
TEMPERATURE_NAMES: tuple[str, ...] = ("njs", "hns", "prop1", "fixed")


def make_temperature(
    spec: None | float | int | str | Mapping[str, Any] | Temperature,
) -> Temperature | None:
    """Build a temperature rule from a spec.

    Accepted: ``None`` or ``"none"`` (no scaling), a number ``> 0`` or a numeric string
    (``2.5``, ``"2.5"``: :class:`FixedTemperature`), ``"njs"``, ``"hns"``, ``"prop1"``
    (defaults), a dict ``{"name": "njs", "rho": 1e-5}`` / ``{"name": "hns", "n_grid": 50}`` /
    ``{"name": "prop1", "rho": 0.1}`` / ``{"name": "fixed", "beta": 2.0}`` (what YAML configs
    use), or a :class:`Temperature` instance (returned as is).
    """
    accepted = ("None, a number > 0 (fixed beta), 'njs', 'hns', 'prop1', a dict such as "
                "{'name': 'njs', 'rho': 1e-5}, or a Temperature instance")
    if spec is None or isinstance(spec, Temperature):
        return spec
    if isinstance(spec, Mapping):
        return _temperature_from_dict(spec)
    if isinstance(spec, bool):
        raise ValueError(f"Unknown temperature {spec!r}; accepted: {accepted}.")
    if isinstance(spec, int | float):
        if not spec > 0 or not math.isfinite(spec):
            raise ValueError(f"A fixed temperature must be a finite number > 0, got {spec!r}.")
        return FixedTemperature(float(spec))
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("none", ""):
            return None
        if key in _NAMED:
            return _NAMED[key]()
        try:
            value = float(key)
        except ValueError:
            pass
        else:
            return make_temperature(value)
    raise ValueError(f"Unknown temperature {spec!r}; accepted: {accepted}.")


def _temperature_from_dict(spec: Mapping[str, Any]) -> Temperature:
    name = str(spec.get("name", "")).strip().lower()
    if name not in TEMPERATURE_NAMES:
        raise ValueError(
            f"A temperature dict needs 'name' in {', '.join(TEMPERATURE_NAMES)}, got {dict(spec)!r}; "
            "e.g. {'name': 'njs', 'rho': 1e-5}."
        )
    cls: type[Temperature] = FixedTemperature if name == "fixed" else _NAMED[name]
    kwargs = {k: _number_or_str(v) for k, v in spec.items() if k != "name"}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in accepted:
            raise ValueError(
                f"Unknown argument {key!r} for temperature {name!r}; accepted: "
                f"{', '.join(accepted)}."
            )
    return cls(**kwargs)


def _number_or_str(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string: turn numeric strings into floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
