"""What ``evaluate.py --diagnose`` runs: :func:`cli_diagnose` at the evaluation's threat model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnnrobust.evaluation.diagnose.driver import diagnose
from bnnrobust.evaluation.diagnose.results import Diagnosis


def default_threat_model(attacks: dict[str, Any] | None) -> tuple[float, str]:
    """``(eps, norm)`` for ``evaluate.py --diagnose`` without ``--diagnose_eps``: the largest
    L∞ eps among the evaluation's attacks (else the largest L2 eps; else 8/255 L∞)."""
    found: dict[str, list[float]] = {"linf": [], "l2": []}
    for atk in (attacks or {}).values():
        desc = atk.describe() if hasattr(atk, "describe") else {}
        eps, norm = desc.get("eps"), desc.get("norm")
        if isinstance(eps, int | float) and not isinstance(eps, bool) and eps > 0 and norm in found:
            found[str(norm)].append(float(eps))
    for norm in ("linf", "l2"):
        if found[norm]:
            return max(found[norm]), norm
    return 8 / 255, "linf"


def cli_diagnose(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attacks: dict[str, Any] | None = None,
    eps: float | None = None,
    norm: str | None = None,
    n_samples: int = 200,
    seed: int = 0,
    batch_size: int = 256,
    quick: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> Diagnosis:
    """What ``evaluate.py --diagnose`` runs: :func:`diagnose` at the evaluation's threat model.

    ``eps``/``norm`` default to :func:`default_threat_model` of the evaluation's attacks. ``x``
    and ``y`` are moved to ``device`` (default: the model's device).
    """
    if eps is None:
        eps, default_norm = default_threat_model(attacks)
        norm = norm or default_norm
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else x.device
    return diagnose(model, x.to(device), y.to(device), eps=eps, norm=norm or "linf",
                    seed=seed, n_samples=n_samples, batch_size=batch_size, quick=quick,
                    progress=progress)
