"""The containers of the signal-propagation metrics (:mod:`bnnrobust.metrics.signal`).

:class:`SignalSums` holds *sums and counts* per β variant and quantity (count, sum, sum of
squares, min, max, plus a fixed-bin histogram of the singular values); partial results of
several batches or DDP ranks add up exactly (``+``, :meth:`SignalSums.reduce`,
:meth:`SignalSums.all_reduce`) and :meth:`SignalSums.finalize` turns them into the
:class:`SignalStats` (means, population stds, min, max, non-finite counts, warnings), never a
mean of means. :mod:`bnnrobust.metrics.signal` computes the sums and re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

if TYPE_CHECKING:
    import torch.distributed

__all__ = [
    "DEFAULT_VARIANTS",
    "JSV_HIST_LIMITS",
    "QUANTITIES",
    "SUMMARY_KEYS",
    "QuantityStats",
    "ReduceOp",
    "SignalStats",
    "SignalSums",
]

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

    def all_reduce(self, group: torch.distributed.ProcessGroup | None = None) -> SignalSums:
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
