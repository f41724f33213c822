"""HNS (Hessian Norm Scaling, paper §5.2): the Hessian norm and the β* it selects.

* :func:`hessian_norm`: ``‖β² Jᵀ S(β) J‖_F`` per sample and β, from the d×d Gram matrix
  ``G = J Jᵀ`` (never an N×N matrix) and free of cancellation in the saturated tail;
* :func:`hns_grid`: the β grid; :func:`hns_beta_from_gram`: β* = the grid point of largest
  norm, with its fallbacks; :func:`hns_temperature` / :func:`hns_beta_with_fallback`: β* of
  a model at given inputs (one batched Jacobian).

The rule that uses them (:class:`~bnnrobust.attacks.temperature.HNS`) and the notation are
in :mod:`bnnrobust.attacks.temperature`, which re-exports these functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import check_labels, eval_mode
from bnnrobust.attacks.jacobian import gram_from_jacobian, input_jacobian_and_logits
from bnnrobust.validation import positive_int

__all__ = [
    "hessian_norm",
    "hns_beta_from_gram",
    "hns_beta_with_fallback",
    "hns_grid",
    "hns_temperature",
]


#: elements of the largest (rows, d, d) float64 temporary of :func:`_centred_sum` (32 MiB)
_TR_CHUNK_ELEMENTS = 1 << 22

#: :func:`_sqrt_tr_sgsg` sums ``Σ q_a q_b C'_ab²`` from ``C'`` itself where the O(d²)
#: expansion cancels to below this fraction of its parts' magnitudes
_CANCELLATION_TOL = 1e-4


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
        C' = G' − w 1ᵀ − 1 wᵀ,  w = σ u − σ² s / 2,

    a sum of non-negative terms, each computed from small quantities directly. Returned as
    ``σ sqrt(T)`` (no underflow of ``σ²``). The first term costs O(d²) per β as
    ``qᵀ(G'∘G')q − 4 Σ q w u + 2 Σ q w² + 2 (Σ q w)²``; where these parts cancel to below
    :data:`_CANCELLATION_TOL` of their magnitudes (rows ``J_a − J_r`` nearly alike), it is
    summed from ``C'`` itself instead (O(d³), :func:`_centred_sum`), so the relative error stays
    near ``d · 1e-16 / _CANCELLATION_TOL`` at worst.
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
    w = sigma[..., None] * u - (0.5 * sigma * sigma * s)[..., None]  # (B, K, d)
    quad = ((q @ (gram_ref * gram_ref)) * q).sum(-1)
    cross = 4.0 * (q * w * u).sum(-1)
    qw = (q * w).sum(-1)
    square = 2.0 * (q * w * w).sum(-1) + 2.0 * qw * qw
    t1 = quad - cross + square
    hard = t1 < _CANCELLATION_TOL * (quad + cross.abs() + square)
    if bool(hard.any()):
        t1 = t1.masked_scatter(hard, _centred_sum(gram_ref, q, w, hard))
    out = sigma * (t1 + t2 + t3).sqrt()
    return torch.where(sigma == 0, torch.zeros_like(out), out)


def _centred_sum(gram_ref: Tensor, q: Tensor, w: Tensor, where: Tensor) -> Tensor:
    """``Σ_ab q_a q_b (G'_ab − w_a − w_b)²`` at the (B, K) entries ``where`` (flat, in order).

    Memory: chunks of at most ``_TR_CHUNK_ELEMENTS`` float64 values whatever B, K and d.
    """
    b_idx, k_idx = where.nonzero(as_tuple=True)
    d = gram_ref.shape[-1]
    out = torch.empty(b_idx.numel(), dtype=gram_ref.dtype, device=gram_ref.device)
    rows = max(1, _TR_CHUNK_ELEMENTS // (d * d))
    for i0 in range(0, b_idx.numel(), rows):
        b, kk = b_idx[i0 : i0 + rows], k_idx[i0 : i0 + rows]
        ww, qq = w[b, kk], q[b, kk]  # (m, d)
        cm = gram_ref[b] - ww[:, :, None]
        cm.sub_(ww[:, None, :]).square_()
        out[i0 : i0 + rows] = ((cm @ qq[..., None]).squeeze(-1) * qq).sum(-1)
    return out


def hessian_norm(
    jac: Tensor, logits: Tensor, beta: Tensor | float, *, is_gram: bool = False
) -> Tensor:
    """``‖β² Jᵀ S(β) J‖_F`` per sample (and per β), via ``tr(S G S G)`` with ``G = J Jᵀ``.

    This is the Frobenius norm of the input Hessian of ``CE(β f(x), y)`` for a
    piecewise-linear network (where ``∂J/∂x = 0``); it does not depend on y. Units: loss per
    squared input unit. Computed without cancellation
    (:func:`~bnnrobust.attacks.hns._sqrt_tr_sgsg`), so it stays accurate far into the
    saturated tail (relative error ~1e-12 where ``1 − max p`` is 1e-70).

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
    positive_int("n_grid", n_grid)
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
    return hns_beta_with_fallback(model, x, y, n_grid, eps_min, chunk_size)[0].to(x.dtype)


def hns_beta_with_fallback(
    model: nn.Module, x: Tensor, y: Tensor, n_grid: int, eps_min: float, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """HNS's β* (B,) float64 at ``x`` and its fallback mask (B,) bool (:func:`hns_beta_from_gram`);
    what :meth:`HNS.start <bnnrobust.attacks.temperature.HNS.start>` uses."""
    if x.shape[0] == 0:
        empty = x.new_zeros((0,), dtype=torch.float64)
        return empty, empty.bool()
    with eval_mode(model):
        jac, logits = input_jacobian_and_logits(model, x.detach(), chunk_size=chunk_size)
    check_labels(logits, y)
    return hns_beta_from_gram(gram_from_jacobian(jac), logits, y, n_grid, eps_min)
