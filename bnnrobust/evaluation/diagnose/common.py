"""Small helpers shared by the checks: batched prediction and attack, fractions, noise."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import Attack


def noise(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy ``p`` on ``n`` samples."""
    if n <= 0 or math.isnan(p):
        return 0.0
    return 2.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)


def frac(mask: Tensor, among: Tensor | None = None) -> float:
    """Fraction of True in ``mask`` (restricted to ``among``); nan when nothing to count."""
    if among is not None:
        mask = mask[among]
    return float(mask.float().mean()) if mask.numel() else math.nan


def batches(n: int, batch_size: int) -> list[slice]:
    """Slices of ``range(n)`` of at most ``batch_size`` each."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """(B, d) logits, batched (the caller puts the model in eval mode)."""
    return torch.cat([model(x[s]).detach() for s in batches(x.shape[0], batch_size)])


def correct_after(model: nn.Module, attack: Attack, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per-sample bool: still correctly classified on ``attack``'s examples."""
    out = []
    for s in batches(x.shape[0], batch_size):
        x_adv = attack(model, x[s], y[s])
        with torch.no_grad():
            out.append(model(x_adv).argmax(dim=1) == y[s])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)
