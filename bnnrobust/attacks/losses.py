"""Per-sample attack losses.

Every loss here returns one value per sample, shape (B,). Attacks *sum* it over the
batch before calling ``torch.autograd.grad`` (never average: a mean scales every
gradient by 1/B and underflows sooner, and the sign/normalised steps do not need it).

Names:

* ``"ce"`` — cross-entropy ``-log softmax(z)_y``.
* ``"dlr"`` — Difference of Logits Ratio (Croce & Hein 2020), needs d >= 3:
  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >= ...``
  the sorted logits.
* ``"dlr_targeted"`` — targeted DLR, needs d >= 4 and a ``target`` class per sample:
  ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

All losses are "higher = more adversarial" (an attack ascends them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the names accepted by :func:`per_sample_loss`
LOSSES: tuple[str, ...] = ("ce", "dlr", "dlr_targeted")

_MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr_targeted": 4}


def check_loss_name(name: str) -> str:
    """Return the canonical (lower-case) loss name or raise a ValueError listing :data:`LOSSES`."""
    key = name.lower() if isinstance(name, str) else name
    if key not in LOSSES:
        accepted = ", ".join(repr(n) for n in LOSSES)
        raise ValueError(f"Unknown attack loss {name!r}; accepted: {accepted}.")
    return key


def per_sample_loss(name: str, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Attack loss of each sample.

    Args:
        name: one of :data:`LOSSES` (``"ce"``, ``"dlr"``, ``"dlr_targeted"``).
        logits: (B, d) logits (possibly temperature-scaled).
        y: (B,) integer true labels in [0, d).
        target: (B,) integer target classes, required for ``"dlr_targeted"`` only.

    Returns:
        (B,) loss per sample, in the logits' dtype; sum it over the batch for a gradient.
    """
    key = check_loss_name(name)
    if logits.dim() != 2:
        raise ValueError(f"Logits must have shape (B, d), got {tuple(logits.shape)}.")
    d = logits.shape[1]
    if d < _MIN_CLASSES[key]:
        raise ValueError(
            f"Loss {key!r} needs at least {_MIN_CLASSES[key]} classes, the model has d={d}; "
            f"use loss='ce' for models with fewer classes."
        )
    y = y.long()
    if key == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    z_sorted, idx_sorted = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if key == "dlr":
        # largest logit among i != y: pi1 unless pi1 is y, then pi2
        top_is_y = idx_sorted[:, 0] == y
        z_other = torch.where(top_is_y, z_sorted[:, 1], z_sorted[:, 0])
        denom = z_sorted[:, 0] - z_sorted[:, 2] + 1e-12
        return -(z_y - z_other) / denom
    if target is None:
        raise ValueError("Loss 'dlr_targeted' needs a target class per sample (target=...).")
    target = target.long()
    if target.shape != y.shape:
        raise ValueError(f"target must have shape {tuple(y.shape)}, got {tuple(target.shape)}.")
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    denom = z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12
    return -(z_y - z_t) / denom


def summed_loss(name: str, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Scalar loss for ``torch.autograd.grad``: :func:`per_sample_loss` summed over the batch."""
    return per_sample_loss(name, logits, y, target).sum()
