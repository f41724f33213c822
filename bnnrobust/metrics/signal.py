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
(:meth:`SignalSums.finalize`) — never a mean of means.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

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

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

#: per-variant quantities accumulated by :class:`SignalSums`
QUANTITIES: tuple[str, ...] = (
    "jsv",  # every singular value of βJ (pooled over samples)
    "jsv_cond",  # per-sample condition number σ_max/σ_min of J (β cancels)
    "psi_norm",  # per-sample ‖p(β) − onehot(y)‖₂
    "grad_norm",  # per-sample ‖∂ℓ(β)/∂x‖₂
    "sign_grad_norm",  # per-sample sqrt(#non-zero entries of ∂ℓ(β)/∂x)
    "zero_grad",  # per-sample indicator: the input gradient is exactly zero
    "beta",  # per-sample β used
)
_Q = {name: i for i, name in enumerate(QUANTITIES)}

#: headline metrics of one variant: key -> (quantity, statistic)
SUMMARY_KEYS: dict[str, tuple[str, str]] = {
    "jsv_mean": ("jsv", "mean"),
    "jsv_std": ("jsv", "std"),
    "jsv_min": ("jsv", "min"),
    "jsv_max": ("jsv", "max"),
    "jsv_cond": ("jsv_cond", "mean"),
    "psi_norm": ("psi_norm", "mean"),
    "grad_norm": ("grad_norm", "mean"),
    "sign_grad_norm": ("sign_grad_norm", "mean"),
    "zero_grad_frac": ("zero_grad", "mean"),
    "beta": ("beta", "mean"),
}

#: right edges of the singular-value histogram buckets: 6 per decade from 1e-8 to 1e8, then
#: one catch-all bucket (values <= 1e-8, zeros included, fall in the first bucket)
JSV_HIST_LIMITS: Tensor = torch.cat(
    [torch.logspace(-8, 8, 97, dtype=torch.float64), torch.tensor([1e300], dtype=torch.float64)]
)

DEFAULT_VARIANTS: tuple[str, ...] = ("original", "njs", "hns")

ReduceOp = Literal["sum", "min", "max"]


@dataclass
class QuantityStats:
    """Finalized statistics of one quantity (population std, ddof = 0).

    ``n`` counts values (singular values for ``jsv``, samples otherwise); ``n_nan`` and
    ``n_inf`` count the non-finite ones. Any nan makes mean/std/min/max nan.
    """

    n: int
    mean: float
    std: float
    min: float
    max: float
    n_nan: int = 0
    n_inf: int = 0

    @property
    def n_nonfinite(self) -> int:
        return self.n_nan + self.n_inf

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "n_nan": self.n_nan, "n_inf": self.n_inf}


@dataclass
class SignalStats:
    """Finalized signal-propagation statistics (see the module docstring).

    Attributes:
        variants: the β variants, in order (e.g. ``("original", "njs", "hns")``).
        stats: ``stats[variant][quantity]`` for every quantity of :data:`QUANTITIES`.
        n_samples: samples seen (correct or not).
        n_correct: samples kept: correctly classified, plus those with non-finite logits.
        n_nonfinite_logits: samples whose logits contain nan or inf (kept, see above).
        hist_limits: right edges of the singular-value histogram buckets (:data:`JSV_HIST_LIMITS`).
        hist: ``hist[variant]``: bucket counts of the singular values of βJ.
        warnings: one sentence per problem (non-finite metrics, no correct sample).
    """

    variants: tuple[str, ...]
    stats: dict[str, dict[str, QuantityStats]]
    n_samples: int
    n_correct: int
    n_nonfinite_logits: int
    hist_limits: list[float] = field(default_factory=list)
    hist: dict[str, list[int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def clean_acc(self) -> float:
        """Fraction of the samples that are correctly classified (non-finite logits count as wrong)."""
        if self.n_samples == 0:
            return math.nan
        return (self.n_correct - self.n_nonfinite_logits) / self.n_samples

    def summary(self, variant: str) -> dict[str, float]:
        """Headline metrics of one variant, keyed as in :data:`SUMMARY_KEYS` (``jsv_mean``, ...)."""
        if variant not in self.stats:
            raise KeyError(f"Unknown variant {variant!r}; available: {list(self.variants)}.")
        s = self.stats[variant]
        return {key: float(getattr(s[q], stat)) for key, (q, stat) in SUMMARY_KEYS.items()}

    def nonfinite_metrics(self) -> list[str]:
        """``"variant/quantity"`` for every quantity holding a nan or inf value."""
        return [f"{v}/{q}" for v in self.variants for q in QUANTITIES
                if self.stats[v][q].n_nonfinite > 0]

    def to_dict(self) -> dict[str, object]:
        """JSON-able nested dict (nan/inf stay floats; ``json.dumps`` writes NaN/Infinity)."""
        return {
            "n_samples": self.n_samples,
            "n_correct": self.n_correct,
            "n_nonfinite_logits": self.n_nonfinite_logits,
            "clean_acc": self.clean_acc,
            "variants": {
                v: {"summary": self.summary(v),
                    "quantities": {q: self.stats[v][q].to_dict() for q in QUANTITIES}}
                for v in self.variants
            },
            "warnings": list(self.warnings),
        }


@dataclass
class SignalSums:
    """Additive partial results of :func:`signal_sums`; merge with ``+`` or :meth:`reduce`.

    All tensors are float64 on one device. ``(V, Q)`` tensors hold, per variant and quantity
    (:data:`QUANTITIES`): ``count``, ``total`` (sum), ``total_sq`` (sum of squares), ``n_nan``,
    ``n_inf`` (all SUM-reduced), ``minimum`` (MIN) and ``maximum`` (MAX) over the non-nan values.
    ``hist`` (V, H) holds singular-value bucket counts (SUM); ``counts`` (3,) holds
    ``[n_samples, n_correct, n_nonfinite_logits]`` (SUM).
    """

    variants: tuple[str, ...]
    count: Tensor
    total: Tensor
    total_sq: Tensor
    n_nan: Tensor
    n_inf: Tensor
    minimum: Tensor
    maximum: Tensor
    hist: Tensor
    counts: Tensor

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def empty(cls, variants: Sequence[str] = DEFAULT_VARIANTS,
              device: torch.device | str | None = None) -> SignalSums:
        """Sums of nothing (the neutral element of ``+``)."""
        variants = tuple(variants)
        if len(set(variants)) != len(variants):
            raise ValueError(f"Variant names must be distinct, got {list(variants)}.")
        shape = (len(variants), len(QUANTITIES))
        f64 = torch.float64
        return cls(
            variants=variants,
            count=torch.zeros(shape, dtype=f64, device=device),
            total=torch.zeros(shape, dtype=f64, device=device),
            total_sq=torch.zeros(shape, dtype=f64, device=device),
            n_nan=torch.zeros(shape, dtype=f64, device=device),
            n_inf=torch.zeros(shape, dtype=f64, device=device),
            minimum=torch.full(shape, math.inf, dtype=f64, device=device),
            maximum=torch.full(shape, -math.inf, dtype=f64, device=device),
            hist=torch.zeros((len(variants), len(JSV_HIST_LIMITS)), dtype=f64, device=device),
            counts=torch.zeros(3, dtype=f64, device=device),
        )

    def add_values(self, variant: str, quantity: str, values: Tensor) -> None:
        """Accumulate raw values (any shape) of one quantity of one variant, in place."""
        if variant not in self.variants:
            raise KeyError(f"Unknown variant {variant!r}; this SignalSums holds {list(self.variants)}.")
        if quantity not in _Q:
            raise KeyError(f"Unknown quantity {quantity!r}; accepted: {list(QUANTITIES)}.")
        v, q = self.variants.index(variant), _Q[quantity]
        vals = values.detach().reshape(-1).to(device=self.count.device, dtype=torch.float64)
        if vals.numel() == 0:
            return
        nan = torch.isnan(vals)
        self.count[v, q] += vals.numel()
        self.total[v, q] += vals.sum()
        self.total_sq[v, q] += (vals * vals).sum()
        self.n_nan[v, q] += nan.sum()
        self.n_inf[v, q] += torch.isinf(vals).sum()
        ok = vals[~nan]
        if ok.numel():
            self.minimum[v, q] = torch.minimum(self.minimum[v, q], ok.min())
            self.maximum[v, q] = torch.maximum(self.maximum[v, q], ok.max())
        if quantity == "jsv" and ok.numel():
            limits = JSV_HIST_LIMITS.to(ok.device)
            idx = torch.bucketize(ok, limits).clamp_max(len(limits) - 1)
            self.hist[v] += torch.bincount(idx, minlength=len(limits)).to(torch.float64)

    def add_samples(self, n_samples: int, n_correct: int, n_nonfinite_logits: int) -> None:
        """Accumulate the sample counters, in place."""
        self.counts += torch.tensor([n_samples, n_correct, n_nonfinite_logits],
                                    dtype=torch.float64, device=self.counts.device)

    # -- merging -----------------------------------------------------------------------------
    def _check_same(self, other: SignalSums) -> None:
        if other.variants != self.variants:
            raise ValueError(f"Cannot merge SignalSums of variants {list(self.variants)} and "
                             f"{list(other.variants)}.")

    def __add__(self, other: SignalSums) -> SignalSums:
        """Exact merge of two partial results (e.g. two halves of a data set)."""
        self._check_same(other)
        o = other.to(self.count.device)
        return SignalSums(
            variants=self.variants,
            count=self.count + o.count,
            total=self.total + o.total,
            total_sq=self.total_sq + o.total_sq,
            n_nan=self.n_nan + o.n_nan,
            n_inf=self.n_inf + o.n_inf,
            minimum=torch.minimum(self.minimum, o.minimum),
            maximum=torch.maximum(self.maximum, o.maximum),
            hist=self.hist + o.hist,
            counts=self.counts + o.counts,
        )

    def to(self, device: torch.device | str) -> SignalSums:
        """A copy on ``device`` (DDP with NCCL reduces CUDA tensors)."""
        return SignalSums(self.variants, *(t.to(device) for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.count, self.total, self.total_sq, self.n_nan, self.n_inf, self.minimum,
                self.maximum, self.hist, self.counts)

    def reduce(self, reduce_fn: Callable[[Tensor, ReduceOp], Tensor]) -> SignalSums:
        """Combine across processes with exactly three collective calls (sum, min, max).

        ``reduce_fn(tensor, op)`` must return the reduction of ``tensor`` over all processes
        for ``op`` in ``"sum"``, ``"min"``, ``"max"``; every process must call this method
        (it is a collective). See :meth:`all_reduce` for ``torch.distributed``.
        """
        sums = torch.cat([self.count.reshape(-1), self.total.reshape(-1), self.total_sq.reshape(-1),
                          self.n_nan.reshape(-1), self.n_inf.reshape(-1), self.hist.reshape(-1),
                          self.counts])
        sums = reduce_fn(sums, "sum")
        minimum = reduce_fn(self.minimum.clone(), "min")
        maximum = reduce_fn(self.maximum.clone(), "max")
        vq, vh = self.count.numel(), self.hist.numel()
        parts = torch.split(sums, [vq] * 5 + [vh, 3])
        shape = self.count.shape
        return SignalSums(
            variants=self.variants,
            count=parts[0].reshape(shape),
            total=parts[1].reshape(shape),
            total_sq=parts[2].reshape(shape),
            n_nan=parts[3].reshape(shape),
            n_inf=parts[4].reshape(shape),
            minimum=minimum,
            maximum=maximum,
            hist=parts[5].reshape(self.hist.shape),
            counts=parts[6],
        )

    def all_reduce(self, group: ProcessGroup | None = None) -> SignalSums:
        """:meth:`reduce` over ``torch.distributed`` (identity when it is not initialized)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}

        def fn(t: Tensor, op: ReduceOp) -> Tensor:
            t = t.contiguous()
            dist.all_reduce(t, op=ops[op], group=group)
            return t

        return self.reduce(fn)

    # -- finalizing --------------------------------------------------------------------------
    def finalize(self) -> SignalStats:
        """Means, population stds, min, max from the sums; warnings for non-finite metrics."""
        cnt, tot, sq = self.count.cpu(), self.total.cpu(), self.total_sq.cpu()
        nnan, ninf = self.n_nan.cpu(), self.n_inf.cpu()
        mn, mx = self.minimum.cpu(), self.maximum.cpu()
        n_samples, n_correct, n_bad_logits = (int(c) for c in self.counts.cpu().tolist())
        stats: dict[str, dict[str, QuantityStats]] = {}
        notes: list[str] = []
        for v, variant in enumerate(self.variants):
            stats[variant] = {}
            for q, quantity in enumerate(QUANTITIES):
                n = int(cnt[v, q])
                n_nan, n_inf = int(nnan[v, q]), int(ninf[v, q])
                if n == 0:
                    mean = std = lo = hi = math.nan
                else:
                    mean = float(tot[v, q]) / n
                    if n_nan or not math.isfinite(mean):
                        std = math.nan
                    else:
                        std = math.sqrt(max(float(sq[v, q]) / n - mean * mean, 0.0))
                    lo, hi = float(mn[v, q]), float(mx[v, q])
                    if n_nan:
                        lo = hi = math.nan
                stats[variant][quantity] = QuantityStats(n, mean, std, lo, hi, n_nan, n_inf)
                if n_nan or n_inf:
                    what = f"{n_nan} nan" if n_nan else ""
                    what += (" and " if n_nan and n_inf else "") + (f"{n_inf} inf" if n_inf else "")
                    unit = "singular values" if quantity == "jsv" else "samples"
                    notes.append(f"signal metric {variant}/{quantity} is non-finite: {what} of "
                                 f"{n} {unit}.")
        if n_bad_logits:
            notes.append(f"{n_bad_logits} of {n_samples} samples have non-finite logits; they are "
                         "kept, so the metrics they touch are non-finite.")
        if n_samples and n_correct == 0:
            notes.append(f"none of the {n_samples} samples is correctly classified; every signal "
                         "metric is nan.")
        return SignalStats(
            variants=self.variants,
            stats=stats,
            n_samples=n_samples,
            n_correct=n_correct,
            n_nonfinite_logits=n_bad_logits,
            hist_limits=JSV_HIST_LIMITS.tolist(),
            hist={v: [int(c) for c in self.hist[i].cpu().tolist()] for i, v in enumerate(self.variants)},
            warnings=notes,
        )


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
        if not betas:
            raise ValueError("betas must name at least one variant, e.g. {'original': 1.0}.")
        b = x.shape[0]
        for name, beta in betas.items():
            if isinstance(beta, str) and beta != HNS:
                raise ValueError(f"β of variant {name!r} must be a float, a tensor or {HNS!r}, "
                                 f"got {beta!r}.")
        beta_t = {name: _as_beta(name, beta, b, x.device) for name, beta in betas.items()
                  if not isinstance(beta, str)}
        sums = SignalSums.empty(tuple(betas), device=x.device)
        if b == 0:
            return sums

        if jacobian is None:
            jac, logits = input_jacobian_and_logits(model, x, chunk_size=chunk_size)
        else:
            jac, logits = (t.detach() for t in jacobian)
            if jac.dim() != 3 or jac.shape[0] != b or logits.shape != jac.shape[:2]:
                raise ValueError(f"jacobian must be (J (B, d, N), logits (B, d)) with B={b}, got "
                                 f"{tuple(jac.shape)} and {tuple(logits.shape)}.")
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

        jac, xk, yk = to_jacobian_space(jac[keep], model, jacobian_space), x[keep], y[keep]
        k = int(keep.sum())
        # singular values of J per sample, from the d×d Gram matrix (nan where J is not finite)
        sv = torch.full((k, min(d, n_in)), math.nan, dtype=torch.float64, device=x.device)
        finite_j = torch.isfinite(jac).flatten(1).all(dim=1)
        if bool(finite_j.any()):
            sv[finite_j] = singular_values_from_gram(gram_from_jacobian(jac[finite_j]), n_in)
        del jac
        s_max, s_min = sv[:, 0], sv[:, -1]
        cond = torch.where(s_min > 0, s_max / s_min, torch.full_like(s_max, math.inf))
        cond = torch.where(torch.isnan(s_max) | torch.isnan(s_min), torch.full_like(s_max, math.nan), cond)

        xk = xk.requires_grad_(True)
        out = model(xk)
        onehot = F.one_hot(yk, d).to(torch.float64)
        for name, beta_all in beta_t.items():
            beta = beta_all[keep]
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
    return sums


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
