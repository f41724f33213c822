"""torchattacks adapters behind bnnrobust's :class:`~bnnrobust.attacks.base.Attack` call.

Peers are reference points: the strongest honest number for a model is the per-sample
worst case over our attacks *and* independent implementations (see
:mod:`bnnrobust.attacks.cascade`). Every adapter here is called like any bnnrobust attack,
``attack(model, x, y)`` with ``x`` in [0, 1] and eps in [0, 1] pixel units, and hides
torchattacks' habits:

* the torchattacks object is built at call time on the model given, with the device of
  the input (torchattacks fixes the device at construction);
* the model runs in eval mode (``set_model_training_mode(False, False, False)``), and
  bnnrobust's :func:`~bnnrobust.attacks.base.eval_mode` restores every submodule's own
  ``training`` flag afterwards (torchattacks would call ``model.train()`` on the whole model);
* torchattacks seeds torch's *global* generator (``torch.manual_seed(seed)``); we run it
  inside :func:`torch.random.fork_rng`, so the caller's global RNG state is untouched.
  With ``seed=None`` a seed is drawn from the global generator (so runs differ);
* parameters' ``.grad`` are restored (DeepFool calls ``.backward()``, which would
  accumulate into them);
* torchattacks' ``print`` output is swallowed; the number of classes is read from the
  logits.

The classes: :class:`TorchattacksAPGD` (APGD-CE / APGD-DLR), :class:`TorchattacksAPGDT`
(APGD-T), :class:`TorchattacksFAB` (FAB-T, AutoAttack's third attack), :class:`Square`
(score-based, gradient-free: the standard cross-check for gradient masking) and
:class:`DeepFool` (minimal L2 perturbation, *not* bounded by an eps: do not use it as a
threat-model attack).

Note: ``torchattacks.AutoAttack`` runs APGD and FAB with torchattacks' default of 10 steps;
AutoAttack's published budget is 100. The defaults here are the published ones.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import (
    Attack,
    AttackOutput,
    Norm,
    check_eps,
    check_labels,
    check_positive,
)
from bnnrobust.attacks.registry import register_attack
from bnnrobust.validation import check_int

__all__ = [
    "DeepFool",
    "Square",
    "TorchattacksAPGD",
    "TorchattacksAPGDT",
    "TorchattacksAttack",
    "TorchattacksFAB",
]

_TA_NORM = {Norm.LINF: "Linf", Norm.L2: "L2"}


@contextlib.contextmanager
def _param_grads_kept(model: nn.Module) -> Iterator[None]:
    """Detach every parameter's ``.grad`` for the duration and put it back afterwards."""
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        yield
    finally:
        for p, g in saved:
            p.grad = g


class TorchattacksAttack(Attack):
    """Base of the adapters: subclasses build the torchattacks object in :meth:`_build`.

    Args:
        seed: seed passed to torchattacks (which seeds torch's global generator with it,
            inside a forked RNG state here); ``None`` draws one from the global generator.
    """

    #: whether the torchattacks attack needs input gradients (Square does not)
    needs_grad: bool = True
    #: whether it draws random numbers (DeepFool does not: no seed is drawn for it)
    uses_rng: bool = True

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(surrogate=None, seed=seed)

    def _build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        raise NotImplementedError

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        import torchattacks  # noqa: F401 - fail early with a clear ImportError

        with torch.no_grad():
            logits = model(x)
        check_labels(logits, y)
        d = logits.shape[1]
        if self.seed is not None:
            seed = int(self.seed)
        elif not self.uses_rng:
            seed = 0
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
            if x.device.type == "cuda" else []
        grad_ctx = contextlib.nullcontext() if self.needs_grad else torch.no_grad()
        with (
            torch.random.fork_rng(devices=devices),
            contextlib.redirect_stdout(io.StringIO()),
            _param_grads_kept(model),
        ):
            torch.manual_seed(seed)
            atk = self._build(model, d, seed)
            atk.set_device(x.device)
            atk.set_model_training_mode(model_training=False, batchnorm_training=False,
                                        dropout_training=False)
            with grad_ctx:
                x_adv = atk(x, y)
        x_adv = x_adv.detach().to(device=x.device, dtype=x.dtype).clamp(0.0, 1.0)
        return AttackOutput(x_adv)


class _EpsAttack(TorchattacksAttack):
    def __init__(self, eps: float, norm: str | Norm, seed: int | None) -> None:
        super().__init__(seed=seed)
        self.norm = Norm.parse(norm)
        check_positive("eps", float(eps))
        self.eps = check_eps(eps, self.norm)

    def _suffix(self) -> str:
        return "_l2" if self.norm is Norm.L2 else ""


class TorchattacksAPGD(_EpsAttack):
    """torchattacks' APGD (Croce & Hein 2020), untargeted, CE or DLR loss.

    Args:
        eps: radius in [0, 1] pixel units. norm: ``"linf"`` or ``"l2"``.
        steps: iterations per restart (AutoAttack: 100). loss: ``"ce"`` or ``"dlr"``.
        restarts: random restarts (on the samples still robust). rho: step-size threshold.
        seed: see :class:`TorchattacksAttack`.
    """

    def __init__(
        self,
        eps: float,
        norm: str | Norm = "linf",
        steps: int = 100,
        loss: str = "ce",
        restarts: int = 1,
        rho: float = 0.75,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps, norm, seed)
        if loss not in ("ce", "dlr"):
            raise ValueError(f"TorchattacksAPGD loss must be 'ce' or 'dlr', got {loss!r}.")
        self.steps = check_int("steps", steps, integral_float=True)
        self.restarts = check_int("restarts", restarts, integral_float=True)
        self.loss = loss
        self.rho = float(rho)
        self.name = f"ta-apgd-{loss}{self._suffix()}"

    def _build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        import torchattacks

        return torchattacks.APGD(model, norm=_TA_NORM[self.norm], eps=self.eps, steps=self.steps,
                                 n_restarts=self.restarts, seed=seed, loss=self.loss,
                                 rho=self.rho)


class TorchattacksAPGDT(_EpsAttack):
    """torchattacks' APGD-T: targeted DLR loss over the top ``n_target_classes`` classes.

    Args:
        eps, norm, steps, restarts, rho, seed: as :class:`TorchattacksAPGD`.
        n_target_classes: target classes tried per sample (capped at d − 1).
    """

    def __init__(
        self,
        eps: float,
        norm: str | Norm = "linf",
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        rho: float = 0.75,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.steps = check_int("steps", steps, integral_float=True)
        self.restarts = check_int("restarts", restarts, integral_float=True)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, integral_float=True)
        self.rho = float(rho)
        self.name = f"ta-apgd-t{self._suffix()}"

    def _build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        import torchattacks

        if num_classes < 4:
            raise ValueError(f"APGD-T's targeted DLR loss needs at least 4 classes, the model has "
                             f"d={num_classes}.")
        n_t = min(self.n_target_classes, num_classes - 1)
        return torchattacks.APGDT(model, norm=_TA_NORM[self.norm], eps=self.eps, steps=self.steps,
                                  n_restarts=self.restarts, seed=seed, rho=self.rho,
                                  n_classes=n_t + 1)


class TorchattacksFAB(_EpsAttack):
    """torchattacks' FAB (Croce & Hein 2020), targeted version (FAB-T) by default.

    FAB looks for a minimal perturbation; a sample counts as fooled only within ``eps``.

    Args:
        eps, norm, steps, restarts, seed: as :class:`TorchattacksAPGD`.
        n_target_classes: target classes of FAB-T (capped at d − 1).
        targeted: ``True`` for FAB-T (AutoAttack-standard), ``False`` for untargeted FAB.
    """

    def __init__(
        self,
        eps: float,
        norm: str | Norm = "linf",
        steps: int = 100,
        restarts: int = 1,
        n_target_classes: int = 9,
        targeted: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.steps = check_int("steps", steps, integral_float=True)
        self.restarts = check_int("restarts", restarts, integral_float=True)
        self.n_target_classes = check_int("n_target_classes", n_target_classes, integral_float=True)
        self.targeted = bool(targeted)
        self.name = ("ta-fab-t" if self.targeted else "ta-fab") + self._suffix()

    def _build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        import torchattacks

        n_t = min(self.n_target_classes, num_classes - 1)
        return torchattacks.FAB(model, norm=_TA_NORM[self.norm], eps=self.eps, steps=self.steps,
                                n_restarts=self.restarts, seed=seed,
                                multi_targeted=self.targeted, n_classes=n_t + 1)

    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        out = super()._perturb(model, x, y, generator)
        # FAB may return points outside the ball when it fails; keep those samples clean.
        delta = (out.x_adv - x).flatten(1)
        size = delta.abs().amax(1) if self.norm is Norm.LINF else delta.norm(dim=1)
        inside = size <= self.eps * (1 + 1e-6) + 1e-7
        out.x_adv = torch.where(inside.view(-1, *([1] * (x.dim() - 1))), out.x_adv, x)
        return out


class Square(_EpsAttack):
    """Square Attack (Andriushchenko et al. 2020) via torchattacks: score-based, no gradients.

    A gradient-free attack is blind to vanishing or masked gradients, so Square beating a
    gradient attack is the classic sign of gradient masking.

    Args:
        eps: radius in [0, 1] pixel units. norm: ``"linf"`` or ``"l2"``.
        n_queries: model queries per sample and restart (AutoAttack: 5000).
        p_init: initial fraction of pixels changed by a square.
        restarts: restarts on the samples still robust. seed: see :class:`TorchattacksAttack`.
    """

    needs_grad = False

    def __init__(
        self,
        eps: float,
        norm: str | Norm = "linf",
        n_queries: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.n_queries = check_int("n_queries", n_queries, integral_float=True)
        self.restarts = check_int("restarts", restarts, integral_float=True)
        if not 0.0 < float(p_init) <= 1.0:
            raise ValueError(f"Square p_init must lie in (0, 1], got {p_init!r}.")
        self.p_init = float(p_init)
        self.name = f"square{self._suffix()}"

    def _build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        import torchattacks

        return torchattacks.Square(model, norm=_TA_NORM[self.norm], eps=self.eps,
                                   n_queries=self.n_queries, n_restarts=self.restarts,
                                   p_init=self.p_init, loss="margin", seed=seed)


class DeepFool(TorchattacksAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016) via torchattacks: minimal L2 perturbation.

    Unbounded: it returns the smallest perturbation it finds, of any size, so its robust
    accuracy is not a number for any threat model; use it to measure distances to the
    decision boundary (``(x_adv - x).flatten(1).norm(dim=1)``). Deterministic; per-sample
    loop with one backward per class (slow for many classes).

    Args:
        steps: maximum iterations. overshoot: relative overshoot past the boundary.
    """

    name = "deepfool"
    uses_rng = False

    def __init__(self, steps: int = 50, overshoot: float = 0.02) -> None:
        super().__init__(seed=None)
        self.steps = check_int("steps", steps, integral_float=True)
        check_positive("overshoot", float(overshoot), allow_zero=True)
        self.overshoot = float(overshoot)

    def _build(self, model: nn.Module, num_classes: int, seed: int) -> Any:
        import torchattacks

        return torchattacks.DeepFool(model, steps=self.steps, overshoot=self.overshoot)


# names of build_attack (bnnrobust.attacks.registry), in the order list_attacks() gives them
register_attack("square", l2_variant=True,
                description="torchattacks' Square (score-based, gradient-free), 5000 queries")(Square)
register_attack("deepfool", budget="none",
                description="torchattacks' DeepFool (minimal L2 perturbation, no eps bound)")(DeepFool)
register_attack("ta-apgd-ce", fixed={"loss": "ce"}, l2_variant=True,
                description="torchattacks' APGD-CE, 100 steps")(TorchattacksAPGD)
register_attack("ta-apgd-dlr", fixed={"loss": "dlr"}, l2_variant=True,
                description="torchattacks' APGD-DLR, 100 steps")(TorchattacksAPGD)
register_attack("ta-apgd-t", l2_variant=True,
                description="torchattacks' APGD-T (9 target classes), 100 steps")(TorchattacksAPGDT)
register_attack("ta-fab-t", aliases=("fab-t",), fixed={"targeted": True}, l2_variant=True,
                description="torchattacks' FAB-T (9 target classes), 100 steps")(TorchattacksFAB)
