"""Counting robust accuracy: per-sample correctness and its reduction across processes.

One :class:`SampleTally` per pass over the evaluation set (the clean pass, each attack) holds,
as torchmetrics states, which samples stayed correct (a ``(total,)`` hit vector indexed by
global sample number), how many samples were attacked, the temperature β statistics and the
seconds spent. Under ``torch.distributed`` (torchrun, Lightning DDP) ``compute()`` sums the
hit vectors and counts, takes min/max of β and the max of the seconds over the processes, so
every process gets the single-process numbers exactly. Robust accuracy, the worst case over
attacks and the per-sample robust masks are all read from these tallies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["BetaStats", "SampleTally", "TallyResult", "worst_case"]


@dataclass
class BetaStats:
    """Statistics of the attack temperature β over the attacked samples."""

    count: int
    mean: float
    std: float
    min: float
    max: float


@dataclass
class TallyResult:
    """A finished pass: ``mask[i]`` is True where sample ``i`` stayed correct."""

    mask: Tensor
    correct: int
    attacked: int
    seconds: float
    beta: BetaStats | None


class SampleTally(Metric):
    """Per-sample correctness of one pass over ``total`` samples, reduced over processes.

    ``update(index, correct, ...)`` records a batch: ``index`` (B,) global sample numbers,
    ``correct`` (B,) bool; optionally how many of them were attacked, their β (any shape) and
    the seconds spent. ``compute()`` returns a :class:`TallyResult` (collective under DDP).
    """

    full_state_update = False
    hits: Tensor
    attacked: Tensor
    beta_count: Tensor
    beta_sum: Tensor
    beta_sq: Tensor
    beta_min: Tensor
    beta_max: Tensor
    seconds: Tensor

    def __init__(self, total: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if total < 1:
            raise ValueError(f"SampleTally: total must be >= 1, got {total!r}.")
        self.total = int(total)
        self.add_state("hits", torch.zeros(self.total, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("attacked", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("beta_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("beta_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("beta_sq", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("beta_min", torch.tensor(math.inf, dtype=torch.float64),
                       dist_reduce_fx="min")
        self.add_state("beta_max", torch.tensor(-math.inf, dtype=torch.float64),
                       dist_reduce_fx="max")
        self.add_state("seconds", torch.zeros((), dtype=torch.float64), dist_reduce_fx="max")
        # a process may own no batch at all; an empty update keeps compute() well defined
        self.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))

    def update(self, index: Tensor, correct: Tensor, attacked: int = 0,
               beta: Tensor | None = None, seconds: float = 0.0) -> None:
        index = index.to(self.hits.device).long().flatten()
        correct = correct.to(self.hits.device).flatten()
        if index.shape != correct.shape:
            raise ValueError(f"SampleTally: {index.numel()} indices but {correct.numel()} flags.")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.total):
            raise ValueError(f"SampleTally: sample indices must lie in [0, {self.total}).")
        self.hits[index] += correct.long()
        self.attacked += int(attacked)
        self.seconds += float(seconds)
        if beta is not None and beta.numel():
            b = beta.detach().to(self.beta_sum.device, torch.float64).flatten()
            self.beta_count += b.numel()
            self.beta_sum += b.sum()
            self.beta_sq += (b * b).sum()
            self.beta_min = torch.minimum(self.beta_min, b.min())
            self.beta_max = torch.maximum(self.beta_max, b.max())

    def compute(self) -> TallyResult:
        mask = (self.hits > 0).cpu()
        count = int(self.beta_count)
        beta = None
        if count:
            mean = float(self.beta_sum) / count
            var = max(float(self.beta_sq) / count - mean * mean, 0.0)
            beta = BetaStats(count, mean, math.sqrt(var), float(self.beta_min),
                             float(self.beta_max))
        return TallyResult(mask=mask, correct=int(mask.sum()), attacked=int(self.attacked),
                           seconds=float(self.seconds), beta=beta)


def worst_case(clean: Tensor, masks: list[Tensor]) -> Tensor:
    """Samples correct clean and under every attack (per-sample worst case), (total,) bool."""
    out = clean.clone()
    for m in masks:
        out &= m
    return out
