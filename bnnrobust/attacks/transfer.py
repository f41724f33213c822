"""Transfer (black-box) attacks: craft on a source model, evaluate on the target.

A binary network whose gradients vanish can look robust to white-box gradient attacks
while examples crafted on its float reference (or on any similar model) still fool it.
A transfer attack is therefore a cheap check for gradient masking, and a useful member
of a worst-case :class:`~bnnrobust.attacks.cascade.Cascade`.

Example::

    atk = TransferAttack(float_model, PGD(eps=8 / 255, step_size=2 / 255, steps=20))
    x_adv = atk(bnn, x, y)          # crafted on float_model; evaluate bnn(x_adv)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import Attack, AttackOutput

__all__ = ["TransferAttack"]


class TransferAttack(Attack):
    """Run ``attack`` on ``source_model`` and return its examples for the target model.

    The target model passed at call time is only put in eval mode (and restored) by the
    base class; it is never queried. The source model runs under ``attack``'s own
    guarantees (eval mode during the attack, each submodule's ``training`` flag and the
    parameters' ``.grad`` restored). It is moved to the input's device on first use (e.g. a
    source loaded on the CPU by ``evaluate.py`` while the evaluation runs on a GPU).

    Args:
        source_model: the model the examples are crafted on (e.g. the float reference).
        attack: any bnnrobust attack; its eps/norm are this attack's threat model.

    Attributes:
        eps, norm: those of ``attack`` (``None`` if it declares none).
    """

    def __init__(self, source_model: nn.Module, attack: Attack) -> None:
        super().__init__(surrogate=None, seed=None)
        if not isinstance(source_model, nn.Module):
            raise TypeError(f"TransferAttack source_model must be an nn.Module, got "
                            f"{type(source_model).__name__}.")
        if not isinstance(attack, Attack):
            raise TypeError(f"TransferAttack attack must be a bnnrobust Attack, got "
                            f"{type(attack).__name__}; build one with build_attack(...).")
        self.source_model = source_model
        self.attack = attack
        self.eps = getattr(attack, "eps", None)
        self.norm = getattr(attack, "norm", None)
        self.name = f"transfer({attack.name})"

    def describe(self) -> dict[str, object]:
        # a wrapper: the inner attack's description and its budget, and the source model
        inner = self.attack.describe()
        d: dict[str, object] = {"name": self.name}
        d.update({k: inner[k] for k in ("eps", "norm", "steps") if k in inner})
        d.update(source_model=type(self.source_model).__name__, attack=inner)
        return d

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        first = next(iter(self.source_model.parameters()), None)
        if first is not None and first.device != x.device:
            self.source_model.to(x.device)
        out = self.attack.perturb(self.source_model, x, y)
        return AttackOutput(out.x_adv, dict(out.info))
