"""Sizes and budgets of one reproduction: the ``full`` and ``quick`` profiles."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from .specs import REF_KEY, WAQ_KEY, WQ_HIDDEN_KEY, WQ_KEY


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one reproduction (``full()`` or ``quick()``), recorded in the manifest.

    Training overrides are ``None`` where the YAML in ``configs/reproduce/`` decides. eps and
    step sizes are the Fashion-MNIST preset (:mod:`bnnrobust.attacks.presets`): FGSM/PGD L∞
    eps 0.1 (PGD step 0.01, 20 steps), PGD L2 eps 1.5 (step 0.15, 20 steps).
    """

    profile: str
    synthetic: bool = False
    train_subset: int | None = None
    adv_train_subset: int | None = None
    val_size: int | None = None
    max_epochs: int | None = None
    train_batch_size: int | None = None
    width: float | None = None
    synthetic_samples: int = 512
    n_eval: int = 1000
    batch_size: int = 250
    pgd_steps: int | None = None
    apgd_steps: int = 50
    square_queries: int = 500
    restarts: int = 20
    signal_n: int = 500
    sweep_n: int = 500
    sweep_eps: tuple[float, ...] = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2)
    sweep_models: tuple[str, ...] = (REF_KEY, WQ_KEY, WQ_HIDDEN_KEY, WAQ_KEY)
    peer_check_models: tuple[str, ...] = (WQ_KEY, WAQ_KEY)
    rho_n: int = 500
    seed: int = 0
    zoo: bool = False
    clever_n: int = 10
    clever_batches: int = 50
    clever_batch_size: int = 10
    clever_radius: float = 5.0
    clever_models: tuple[str, ...] = (WQ_KEY, WAQ_KEY)

    @classmethod
    def full(cls, synthetic: bool = False, zoo: bool | None = None) -> Settings:
        """The documented run: the converged ``configs/fmnist/`` recipes (all 55k training
        images, 10 epochs; the BC + hidden FC recipe 5), the adversarial trainings of
        ``configs/reproduce/`` (15k images, 2 epochs), 1,000 test images. ``zoo``: reuse the
        model zoo's checkpoints of the recipes instead of training them again (default: on
        Fashion-MNIST, off with ``synthetic``, which has no zoo)."""
        s = cls(profile="full", synthetic=synthetic, zoo=not synthetic if zoo is None else zoo)
        return replace(s, synthetic_samples=20000) if synthetic else s

    @classmethod
    def quick(cls, synthetic: bool = False) -> Settings:
        """The same pipeline at toy size (tests): a few hundred images, tiny budgets."""
        return cls(profile="quick", synthetic=synthetic, train_subset=128, adv_train_subset=64,
                   val_size=32, max_epochs=1, train_batch_size=64, width=0.25,
                   synthetic_samples=128, n_eval=16, batch_size=16, pgd_steps=2, apgd_steps=2,
                   square_queries=4, restarts=2, signal_n=8, sweep_n=16,
                   sweep_eps=(0.0, 0.1), sweep_models=(REF_KEY, WQ_KEY), rho_n=16,
                   clever_n=2, clever_batches=2, clever_batch_size=2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from the manifest

    @property
    def dataset(self) -> str:
        """Attack-preset dataset name."""
        return "synthetic" if self.synthetic else "fmnist"
