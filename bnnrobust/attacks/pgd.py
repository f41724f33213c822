"""PGD and FGSM (L∞ and L2), with optional temperature scaling (PGD++ / FGSM++).

Threat model: ``‖x_adv − x‖ ≤ eps`` in the chosen norm and ``x_adv ∈ [0, 1]``; eps and step
sizes are in [0, 1] pixel units (8/255 for CIFAR L∞). Updates (``g = ∇_x Σ_i ℓ_i``, the
per-sample loss summed over the batch, never averaged):

* L∞: ``x ← clip[0,1](P∞(x + η·sign(g)))``; random start ``x + U(−eps, eps)``, clipped.
* L2: ``x ← clip[0,1](P2(x + η·g/‖g‖₂))`` with ``‖·‖₂`` and the ball projection ``P2`` over
  the whole input of each sample; random start ``x + r·u`` with ``u`` uniform on the unit
  sphere and radius ``r ~ U(0, eps)`` (as torchattacks), clipped. A zero gradient gives no
  move (no division by zero).

With a temperature (``"njs"``, ``"hns"``, a number, or a
:class:`~bnnrobust.attacks.temperature.Temperature`), the loss is taken on the scaled logits:
``state = t.start(model, x_start, y)`` once per restart, then ``t.scale(model(x_t), y, state)``
at every step. ``info["beta"]`` (B,) is the temperature of each sample's last step.

Restarts keep the per-sample worst case: a sample stays robust only if every restart failed;
the first successful adversarial example is kept, else the one of largest (unscaled) loss.
Restarts stop early once every sample is fooled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import (
    Attack,
    AttackOutput,
    Norm,
    check_eps,
    check_labels,
)
from bnnrobust.attacks.losses import per_sample_loss
from bnnrobust.attacks.registry import register_attack
from bnnrobust.attacks.temperature import Temperature, make_temperature
from bnnrobust.validation import check_int, check_number

__all__ = ["FGSM", "PGD"]

#: losses an untargeted PGD accepts (targeted DLR belongs to APGD-T)
PGD_LOSSES: tuple[str, ...] = ("ce", "dlr")


def attack_name(base: str, norm: Norm, loss: str, temperature: Temperature | None) -> str:
    """``"pgd"``, ``"pgd_l2"``, ``"pgd-dlr"``, ``"pgd++njs"``, ``"fgsm_l2++hns"``..."""
    name = base + ("_l2" if norm is Norm.L2 else "")
    if loss != "ce":
        name += f"-{loss}"
    if temperature is not None:
        name += f"++{temperature.name}"
    return name


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018); PGD++ with a temperature.

    Args:
        eps: radius of the threat model in [0, 1] pixel units (L∞: per pixel; L2: whole image).
        step_size: step η in the same units (L∞: per pixel; L2: length of the step).
        steps: number of gradient steps T (>= 1).
        norm: ``"linf"`` or ``"l2"``.
        restarts: number of random restarts (>= 1); per-sample worst case is kept.
        loss: ``"ce"`` (default) or ``"dlr"``, summed over the batch.
        temperature: None, a number β > 0, ``"njs"``, ``"hns"`` or a ``Temperature``.
        random_start: start from a random point of the ball (else from ``x``).
        surrogate: attack-time backward of sign activations (see ``surrogates``).
        seed: seed of the attack's random starts (None: torch's global generator).

    Example::

        attack = PGD(eps=8 / 255, step_size=2 / 255, steps=20, temperature="hns", seed=0)
        x_adv = attack(model, x, y)           # model in any mode; restored afterwards
        out = attack.perturb(model, x, y)     # out.x_adv, out.info["beta"]
    """

    _base_name = "pgd"

    def __init__(
        self,
        eps: float = 8 / 255,
        step_size: float = 2 / 255,
        steps: int = 20,
        norm: str | Norm = "linf",
        restarts: int = 1,
        loss: str = "ce",
        temperature: None | float | str | Temperature = None,
        random_start: bool = True,
        surrogate: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(surrogate=surrogate, seed=seed)
        self.eps = check_number("eps", eps, allow_zero=True)
        self.step_size = check_number("step_size", step_size, allow_zero=False)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.norm = Norm.parse(norm)
        check_eps(self.eps, self.norm)
        key = loss.lower() if isinstance(loss, str) else loss
        if key not in PGD_LOSSES:
            accepted = ", ".join(repr(n) for n in PGD_LOSSES)
            raise ValueError(
                f"Unknown loss {loss!r} for {type(self).__name__}; accepted: {accepted} "
                "(targeted DLR is available in APGD)."
            )
        self.loss = key
        self.temperature = make_temperature(temperature)
        self.random_start = bool(random_start)
        self.name = attack_name(self._base_name, self.norm, self.loss, self.temperature)

    # ------------------------------------------------------------------ attack
    def _run(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None,
        t: Temperature | None,
    ) -> tuple[Tensor, Tensor | None]:
        """One run (one restart) under ``t`` (this call's prepared temperature): returns the
        final iterate and the last step's β (or None)."""
        x_adv = (self.norm.random_start(x, self.eps, generator) if self.random_start
                 else x.clone())
        state = t.start(model, x_adv, y) if t is not None else None
        beta = None
        for step in range(self.steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if step == 0:
                check_labels(logits, y)
            if t is not None:
                assert state is not None
                logits, beta = t.scale(logits, y, state)
            loss = per_sample_loss(self.loss, logits, y).sum()
            (grad,) = torch.autograd.grad(loss, x_adv, allow_unused=True)
            if grad is None:  # the output does not depend on the input
                grad = torch.zeros_like(x_adv)
            x_adv = self.norm.project(
                x_adv.detach() + self.step_size * self.norm.direction(grad), x, self.eps)
        return x_adv, beta

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        # this call's temperature (e.g. NJS without a fixed β1 calibrates on the clean batch)
        t = None if self.temperature is None else self.temperature.prepare(model, x)
        if self.restarts == 1:
            x_adv, beta = self._run(model, x, y, generator, t)
            info = {} if beta is None else {"beta": beta.detach().to(x.device)}
            return AttackOutput(x_adv, info)

        best_x = x.clone()
        best_loss = torch.full(y.shape, -math.inf, device=x.device)
        found = torch.zeros(y.shape, dtype=torch.bool, device=x.device)
        best_beta: Tensor | None = None
        for _ in range(self.restarts):
            x_adv, beta = self._run(model, x, y, generator, t)
            with torch.no_grad():
                logits = model(x_adv)
                loss = per_sample_loss(self.loss, logits, y).float()
                fooled = logits.argmax(dim=1) != y
            take = ~found & (fooled | (loss > best_loss))
            best_x[take] = x_adv[take]
            best_loss = torch.where(take, loss, best_loss)
            if beta is not None:
                beta = beta.detach().to(x.device)
                best_beta = (
                    beta.clone() if best_beta is None else torch.where(take, beta, best_beta)
                )
            found |= fooled
            if bool(found.all()):
                break
        info = {"loss": best_loss, "restart_fooled": found}
        if best_beta is not None:
            info["beta"] = best_beta
        return AttackOutput(best_x, info)


class FGSM(PGD):
    """R+FGSM: random start in the ball, one gradient step of size ``step_size`` (default
    eps), projection onto the ball and [0, 1]; FGSM++ with a temperature.

    Args are those of :class:`PGD` (eps and step_size in [0, 1] pixel units); ``steps`` is 1
    and there are no restarts. ``random_start=False`` gives the classic FGSM.
    """

    _base_name = "fgsm"

    def __init__(
        self,
        eps: float = 8 / 255,
        step_size: float | None = None,
        norm: str | Norm = "linf",
        temperature: None | float | str | Temperature = None,
        loss: str = "ce",
        random_start: bool = True,
        surrogate: str | None = None,
        seed: int | None = None,
    ) -> None:
        eps_value = check_number("eps", eps, allow_zero=True)
        if step_size is None:
            # eps = 0 leaves no room to move; any positive step is then projected away
            step_size = eps_value if eps_value > 0 else 1.0
        super().__init__(
            eps=eps,
            step_size=step_size,
            steps=1,
            norm=norm,
            restarts=1,
            loss=loss,
            temperature=temperature,
            random_start=random_start,
            surrogate=surrogate,
            seed=seed,
        )

    def describe(self) -> dict[str, object]:
        # derived from FGSM's own signature (no steps, no restarts); FGSM is one step
        return {**super().describe(), "steps": 1}


# names of build_attack (bnnrobust.attacks.registry), in the order list_attacks() gives them
register_attack("fgsm", temperature=True, l2_variant=True, surrogate=True, budget="fgsm",
                description="R+FGSM (random start, one step); FGSM++ with a temperature")(FGSM)
register_attack("pgd", temperature=True, l2_variant=True, surrogate=True, budget="pgd",
                description="PGD L∞ (Madry et al.); PGD++ with a temperature")(PGD)
register_attack("pgd_l2", fixed={"norm": "l2"}, temperature=True, surrogate=True, budget="pgd",
                description="PGD L2 (the paper's L2 row); PGD++ with a temperature")(PGD)
register_attack("pgd_dlr", aliases=("pgd-dlr",), fixed={"loss": "dlr"}, temperature=True,
                l2_variant=True, surrogate=True, budget="pgd",
                description="PGD with the DLR loss (Croce & Hein 2020)")(PGD)
