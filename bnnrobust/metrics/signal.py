"""Signal-propagation metrics of a classifier (the rows of the seed paper's Table 12).

For a temperature β (a scalar, or one value per sample) the attack loss is
``ℓ(β) = CE(β·f(x), y)``. Over the *correctly classified* samples of a batch we measure,
for each named β variant (by default ``"original"`` β = 1, ``"njs"`` and ``"hns"``):

* the singular values of ``βJ`` (``J = ∂f/∂x``, d × N): pooled mean, std, min, max, and the
  mean per-sample condition number ``σ_max/σ_min`` (``inf`` when ``σ_min = 0``);
* ``‖ψ‖₂ = ‖p(β) − onehot(y)‖₂`` with ``p(β) = softmax(β·f(x))`` (unitless);
* ``‖∂ℓ(β)/∂x‖₂`` (loss units per pixel unit, inputs in [0, 1]);
* ``‖sign(∂ℓ(β)/∂x)‖₂ = sqrt(#non-zero gradient entries)`` (a direct count of vanishing
  gradients; ``sqrt(N)`` when no entry vanishes);
* the fraction of samples whose input gradient is exactly zero everywhere.

Everything is accumulated as *sums and counts* (:class:`SignalSums`: count, sum, sum of
squares, min, max per quantity, plus a fixed-bin histogram of the singular values) so that
partial results from several batches or several DDP ranks add up exactly (SUM / MIN / MAX
reductions) and are only then turned into means and standard deviations
(:meth:`SignalSums.finalize`) — never a mean of means. Those containers live in
:mod:`bnnrobust.metrics.signal_stats`; this module computes them and re-exports their names.

Non-finite values are never dropped: samples whose logits are not finite are *kept* (they
cannot be judged correct or wrong; their ψ and gradient metrics are nan, never a fake zero
gradient), so the statistics they touch become nan/inf, and
:class:`SignalStats` carries a count of non-finite values per quantity plus a warning naming
each affected metric.

This module imports neither Lightning nor ``bnnrobust.systems``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.attacks.base import eval_mode
from bnnrobust.attacks.jacobian import (
    gram_from_jacobian,
    input_jacobian_and_logits,
    singular_values_from_gram,
    to_jacobian_space,
)
from bnnrobust.metrics.signal_stats import (
    DEFAULT_VARIANTS,
    JSV_HIST_LIMITS,
    QUANTITIES,
    SUMMARY_KEYS,
    QuantityStats,
    SignalStats,
    SignalSums,
)
from bnnrobust.metrics.signal_stats import ReduceOp as ReduceOp  # re-exported


# -- computation -------------------------------------------------------------------------------
def _as_beta(name: str, beta: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """β as a float64 (B,) tensor, validated."""
    if torch.is_tensor(beta):
        b = beta.detach().to(device=device, dtype=torch.float64)
        if b.dim() == 0:
            b = b.expand(batch)
        if b.shape != (batch,):
            raise ValueError(f"β of variant {name!r} must be a float or a tensor of shape ({batch},), "
                             f"got shape {tuple(b.shape)}.")
    else:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"β of variant {name!r} must be a float or a tensor, got {type(beta).__name__}.")
        b = torch.full((batch,), float(beta), dtype=torch.float64, device=device)
    if b.numel() and bool((b <= 0).any()):
        raise ValueError(f"β of variant {name!r} must be > 0, got min {float(b.min())!r}.")
    return b


#: β placeholder: "HNS β* per sample, from the Jacobian this call computes anyway"
HNS = "hns"


def default_betas(
    model: nn.Module, x: Tensor, *, n_jsv: int = 100, jacobian_space: str = "normalized"
) -> dict[str, float | str]:
    """The paper's three variants: β = 1, NJS β1 (first ``n_jsv`` samples of ``x``), HNS β*.

    NJS is β1 = 1/mean JSV only (no per-step ρ correction β2, which depends on the attack
    iterate). HNS is the placeholder :data:`HNS`: :func:`signal_sums` computes β* per sample
    from its own Jacobian (same rule and code as ``hns_temperature``, no second Jacobian).
    """
    from bnnrobust.attacks.temperature import njs_temperature

    beta1 = njs_temperature(model, x[:n_jsv], n_jsv=n_jsv, jacobian_space=jacobian_space)
    return {"original": 1.0, "njs": float(beta1), "hns": HNS}


def signal_sums(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    betas: Mapping[str, float | Tensor | str] | None = None,
    *,
    chunk_size: int = 32,
    n_jsv: int = 100,
    n_grid: int = 100,
    jacobian: tuple[Tensor, Tensor] | None = None,
    jacobian_space: str = "normalized",
) -> SignalSums:
    """Additive signal-propagation sums of one batch (see :func:`signal_propagation`).

    The model runs in eval mode (each submodule's flag is restored afterwards) with gradients
    enabled, also inside ``torch.no_grad``/``torch.inference_mode``; parameter ``.grad`` are
    left untouched. Sums live on ``x``'s device.

    ``jacobian``: ``(J, logits)`` of ``x`` already computed by
    :func:`bnnrobust.attacks.jacobian.input_jacobian_and_logits` (model in eval mode), to
    share one Jacobian with other computations (e.g. NJS's β1); not recomputed then.

    ``jacobian_space``: the singular values (``jsv*``) and the default NJS β1 use J with
    respect to the tensor after the model's ``Normalize`` (``"normalized"``, the authors'
    convention, so Table 12 compares with the paper) or the [0, 1] image (``"pixel"``).
    Gradient norms stay per pixel unit; HNS's β* uses the pixel-space J (for one input
    channel its argmax is the same in both spaces).
    """
    if x.dim() < 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x must be a batch (B, ...) and y of shape (B,); got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}.")
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        x = x.detach().clone()
        y = y.detach().clone().long()
        if betas is None:
            betas = (default_betas(model, x, n_jsv=n_jsv, jacobian_space=jacobian_space)
                     if x.shape[0] else {"original": 1.0})
        beta_t = _given_betas(betas, x.shape[0], x.device)
        sums = SignalSums.empty(tuple(betas), device=x.device)
        b = x.shape[0]
        if b == 0:
            return sums

        jac, logits = _jacobian_and_logits(model, x, jacobian, chunk_size)
        d, n_in = logits.shape[1], jac.shape[-1]
        if int(y.min()) < 0 or int(y.max()) >= d:
            raise ValueError(f"Labels must lie in [0, {d - 1}] for a model with {d} classes, got "
                             f"values in [{int(y.min())}, {int(y.max())}].")
        hns_names = [name for name, beta in betas.items() if isinstance(beta, str)]
        if hns_names:
            from bnnrobust.attacks.temperature import hns_beta_from_gram

            finite = torch.isfinite(jac).flatten(1).all(dim=1)
            jac0 = torch.where(finite[:, None, None], jac, torch.zeros_like(jac))
            hns_beta, _ = hns_beta_from_gram(gram_from_jacobian(jac0), logits, y, n_grid)
            for name in hns_names:
                beta_t[name] = hns_beta.to(torch.float64)
        beta_t = {name: beta_t[name] for name in betas}  # the caller's order
        finite_logits = torch.isfinite(logits).all(dim=1)
        keep = (logits.argmax(dim=1) == y) | ~finite_logits
        sums.add_samples(b, int(keep.sum()), int((~finite_logits).sum()))
        if not bool(keep.any()):
            return sums

        sv, cond = _singular_values(to_jacobian_space(jac[keep], model, jacobian_space), d, n_in,
                                    x.device)
        del jac
        xk, yk = x[keep].requires_grad_(True), y[keep]
        out = model(xk)
        onehot = F.one_hot(yk, d).to(torch.float64)
        for name, beta_all in beta_t.items():
            _add_variant(sums, name, beta_all[keep], sv, cond, out, xk, yk, onehot)
    return sums


def _given_betas(betas: Mapping[str, float | Tensor | str], b: int,
                 device: torch.device) -> dict[str, Tensor]:
    """The checked β (B,) float64 of the variants given as numbers or tensors (not the
    :data:`HNS` ones, computed later from the Jacobian)."""
    if not betas:
        raise ValueError("betas must name at least one variant, e.g. {'original': 1.0}.")
    for name, beta in betas.items():
        if isinstance(beta, str) and beta != HNS:
            raise ValueError(f"β of variant {name!r} must be a float, a tensor or {HNS!r}, "
                             f"got {beta!r}.")
    return {name: _as_beta(name, beta, b, device) for name, beta in betas.items()
            if not isinstance(beta, str)}


def _jacobian_and_logits(model: nn.Module, x: Tensor, jacobian: tuple[Tensor, Tensor] | None,
                         chunk_size: int) -> tuple[Tensor, Tensor]:
    """``(J (B, d, N), logits (B, d))`` of ``x``: computed, or the given ones checked."""
    if jacobian is None:
        return input_jacobian_and_logits(model, x, chunk_size=chunk_size)
    b = x.shape[0]
    jac, logits = (t.detach() for t in jacobian)
    if jac.dim() != 3 or jac.shape[0] != b or logits.shape != jac.shape[:2]:
        raise ValueError(f"jacobian must be (J (B, d, N), logits (B, d)) with B={b}, got "
                         f"{tuple(jac.shape)} and {tuple(logits.shape)}.")
    return jac, logits


def _singular_values(jac: Tensor, d: int, n_in: int,
                     device: torch.device) -> tuple[Tensor, Tensor]:
    """Per sample: the singular values of J (k, min(d, N)) on ``device`` from the d×d Gram
    matrix, nan where J is not finite, and the condition number σ_max/σ_min (inf for
    σ_min = 0)."""
    k = jac.shape[0]
    sv = torch.full((k, min(d, n_in)), math.nan, dtype=torch.float64, device=device)
    finite_j = torch.isfinite(jac).flatten(1).all(dim=1)
    if bool(finite_j.any()):
        sv[finite_j] = singular_values_from_gram(gram_from_jacobian(jac[finite_j]), n_in)
    s_max, s_min = sv[:, 0], sv[:, -1]
    cond = torch.where(s_min > 0, s_max / s_min, torch.full_like(s_max, math.inf))
    cond = torch.where(torch.isnan(s_max) | torch.isnan(s_min), torch.full_like(s_max, math.nan), cond)
    return sv, cond


def _add_variant(sums: SignalSums, name: str, beta: Tensor, sv: Tensor, cond: Tensor,
                 out: Tensor, xk: Tensor, yk: Tensor, onehot: Tensor) -> None:
    """Add one β variant's metrics of the kept samples ``xk`` (logits ``out``) to ``sums``."""
    sums.add_values(name, "beta", beta)
    sums.add_values(name, "jsv", sv * beta[:, None])
    sums.add_values(name, "jsv_cond", cond)
    z = out * beta.to(out.dtype)[:, None]
    loss = F.cross_entropy(z, yk, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xk, retain_graph=True)
    with torch.no_grad():
        p = torch.softmax(z.detach(), dim=1).to(torch.float64)
        sums.add_values(name, "psi_norm", (p - onehot).norm(dim=1))
        g = grad.flatten(1)
        # a non-finite loss has no meaningful gradient, even if autograd returns zeros
        finite_g = torch.isfinite(g).all(dim=1) & torch.isfinite(z.detach()).all(dim=1)
        nnz = (g != 0).sum(dim=1).to(torch.float64)
        nan = torch.full_like(nnz, math.nan)
        g_norm = g.to(torch.float64).norm(dim=1)
        sums.add_values(name, "grad_norm", torch.where(finite_g, g_norm, nan))
        sums.add_values(name, "sign_grad_norm", torch.where(finite_g, nnz.sqrt(), nan))
        sums.add_values(name, "zero_grad", torch.where(finite_g, (nnz == 0).to(nnz.dtype), nan))


def signal_propagation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    betas: Mapping[str, float | Tensor | str] | None = None,
    *,
    chunk_size: int = 32,
    n_jsv: int = 100,
    n_grid: int = 100,
    jacobian_space: str = "normalized",
) -> SignalStats:
    """Signal-propagation statistics over the correctly classified samples of ``(x, y)``.

    Args:
        model: classifier taking images in [0, 1] (normalization inside) to (B, d) logits.
        x: (B, C, H, W) images.
        y: (B,) integer labels.
        betas: ``{variant name: β}``, β a positive float, a (B,) tensor aligned with ``x``
            (per sample), or the string ``"hns"`` (HNS β* per sample from this call's own
            Jacobian). ``None``: ``{"original": 1.0, "njs": NJS β1 from the first ``n_jsv``
            samples, "hns": "hns"}``.
        chunk_size: samples per Jacobian forward (memory grows with ``chunk_size * d``).
        n_jsv: reference samples of NJS when ``betas`` is None.
        n_grid: HNS grid size for ``"hns"`` variants.
        jacobian_space: singular values of J with respect to the tensor after the model's
            ``Normalize`` (``"normalized"``, the authors' convention) or the image (``"pixel"``).

    Returns:
        :class:`SignalStats`; ``format_table(stats)`` prints Table 12. Every non-finite metric
        also raises a ``RuntimeWarning`` naming it.

    For many batches or DDP ranks, use :func:`signal_sums`, add the results (``+`` or
    :meth:`SignalSums.all_reduce`) and call :meth:`SignalSums.finalize` once.
    """
    stats = signal_sums(model, x, y, betas, chunk_size=chunk_size, n_jsv=n_jsv,
                        n_grid=n_grid, jacobian_space=jacobian_space).finalize()
    for note in stats.warnings:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return stats


# -- presentation ------------------------------------------------------------------------------
_ROWS: tuple[tuple[str, str], ...] = (
    ("jsv_mean", "jsv (mean)"),
    ("jsv_std", "jsv (std)"),
    ("jsv_min", "jsv (min)"),
    ("jsv_max", "jsv (max)"),
    ("jsv_cond", "jsv condition number (mean)"),
    ("psi_norm", "‖ψ‖₂"),
    ("grad_norm", "‖∂ℓ/∂x‖₂"),
    ("sign_grad_norm", "‖sign(∂ℓ/∂x)‖₂"),
    ("zero_grad_frac", "zero-gradient fraction"),
    ("beta", "β (mean)"),
)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan ⚠"
    if math.isinf(value):
        return ("inf" if value > 0 else "-inf") + " ⚠"
    return f"{value:.2e}"


def format_table(stats: SignalStats) -> str:
    """Markdown table in the layout of the paper's Table 12 (metrics × β variants).

    Non-finite entries print as ``nan ⚠``/``inf ⚠``; warnings follow the table.
    """
    header = "| metric | " + " | ".join(stats.variants) + " |"
    lines = [header, "|---|" + "---|" * len(stats.variants)]
    summaries = {v: stats.summary(v) for v in stats.variants}
    for key, label in _ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(summaries[v][key]) for v in stats.variants) + " |")
    lines.append("")
    lines.append(f"{stats.n_correct} of {stats.n_samples} samples used (correctly classified"
                 + (f", plus {stats.n_nonfinite_logits} with non-finite logits" if stats.n_nonfinite_logits else "")
                 + ").")
    for note in stats.warnings:
        lines.append(f"- ⚠ {note}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_VARIANTS",
    "HNS",
    "JSV_HIST_LIMITS",
    "QUANTITIES",
    "SUMMARY_KEYS",
    "QuantityStats",
    "SignalStats",
    "SignalSums",
    "default_betas",
    "format_table",
    "signal_propagation",
    "signal_sums",
]
