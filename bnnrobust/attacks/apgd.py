"""Auto-PGD (APGD-CE, APGD-DLR, APGD-T), our own implementation.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML). We write it ourselves instead of wrapping
torchattacks for one reason: a temperature (``FixedTemperature``, NJS or HNS, see
:mod:`bnnrobust.attacks.temperature`) must scale the logits before the loss at every step
and stay aligned with its sample, and torchattacks re-orders and sub-selects samples
internally. Without a temperature this implementation follows the reference code
(``fra31/auto-attack``) and agrees with ``torchattacks.APGD``/``APGDT`` within noise
(see ``tests/test_apgd.py``).

Algorithm (per sample, fully batched):

* random start inside the eps ball (L∞: a uniform draw rescaled so its largest entry is
  eps; L2: a Gaussian rescaled to norm eps), clipped to [0, 1];
* step size η starts at 2·eps; momentum α = 0.75 (α = 1 on the first step):
  ``z = P(x_t + η·g)``, ``x_{t+1} = P(x_t + α(z − x_t) + (1 − α)(x_t − x_{t−1}))`` with g
  the sign of the gradient (L∞) or the L2-normalised gradient;
* checkpoints at fractions p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)
  of the steps (in integer steps, as the reference code: first interval ⌊0.22·T⌋, each
  next one 3 % of T shorter, never under 6 % of T). At a checkpoint η is halved for a
  sample when (a) the fraction of steps since the last checkpoint that increased its loss
  is ≤ ρ (0.75), or (b) neither η nor its best loss changed since the last checkpoint;
  a halved sample restarts from its best point (highest loss) and that point's gradient;
* the best point is kept per sample; a sample misclassified at any iterate is fooled and
  stays fooled; fooled samples leave the working batch at the next checkpoint;
* restarts (and APGD-T's target classes) run only on the samples still robust, each from
  the clean input, so a sample counts as robust only if every run failed.

Losses: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR), ``"dlr_targeted"`` (APGD-T: one run per
target class, the 2nd, 3rd, ... most likely class of the clean input, up to
``n_target_classes``). DLR losses are ratios of logit differences and therefore invariant
to a per-sample temperature; a temperature matters for CE only.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
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
from bnnrobust.attacks.losses import check_loss_name, per_sample_loss
from bnnrobust.attacks.registry import register_attack
from bnnrobust.attacks.temperature import Temperature, make_temperature

__all__ = ["APGD", "apgd_checkpoints"]

_NAMES = {"ce": "apgd-ce", "dlr": "apgd-dlr", "dlr_targeted": "apgd-t"}


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations (0-based, after which the step-size check runs) of APGD's checkpoints.

    The first interval is ``max(⌊0.22·steps⌋, 1)``; each next interval is
    ``max(⌊0.03·steps⌋, 1)`` shorter, never shorter than ``max(⌊0.06·steps⌋, 1)``:
    the integer form of p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06).
    """
    k = max(int(0.22 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    decr = max(int(0.03 * steps), 1)
    out: list[int] = []
    i = k - 1
    while i < steps:
        out.append(i)
        k = max(k - decr, k_min)
        i += k
    return out


def _take(obj: Any, keep: Tensor, n: int) -> Any:
    """Index every per-sample tensor (first dim ``n``) inside ``obj`` with ``keep``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if torch.is_tensor(obj):
        return obj[keep] if obj.dim() >= 1 and obj.shape[0] == n else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: _take(getattr(obj, f.name), keep, n) for f in dataclasses.fields(obj)
                   if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, dict):
        return {k: _take(v, keep, n) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_take(v, keep, n) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(v, keep, n) for v in obj)
    raise TypeError(f"cannot index temperature state of type {type(obj).__name__}")


@dataclasses.dataclass
class _Working:
    """The samples one APGD run still attacks, one row each (fewer after a checkpoint drops
    the fooled ones): their position in the run's batch, inputs, labels and target, and the
    iterate's state (current and previous point, gradient, best point and its gradient, best
    misclassified point, best loss, step size, fooled flag, the checkpoint bookkeeping, the
    losses since the last checkpoint and the last β)."""

    pos: Tensor
    x: Tensor
    y: Tensor
    target: Tensor | None
    x_adv: Tensor
    x_old: Tensor
    grad: Tensor
    x_best: Tensor
    grad_best: Tensor
    x_best_adv: Tensor
    loss_best: Tensor
    fooled: Tensor
    step: Tensor
    hist: list[Tensor]
    loss_best_last: Tensor
    reduced_last: Tensor
    beta: Tensor | None

    def take(self, keep: Tensor) -> _Working:
        """The rows ``keep`` of every per-sample tensor."""
        def rows(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, list):
                return [v[keep] for v in value]
            return value[keep]

        return _Working(**{f.name: rows(getattr(self, f.name)) for f in dataclasses.fields(self)})


@dataclasses.dataclass
class _RunOutput:
    """Full-batch outputs of one APGD run, written as samples leave the working batch."""

    x: Tensor
    fooled: Tensor
    loss: Tensor
    beta: Tensor

    def flush(self, w: _Working, idx: Tensor) -> None:
        """Write the working rows ``idx``: the misclassified point where fooled, else the
        best-loss point; their fooled flag, best loss and last β."""
        view = (-1,) + (1,) * (w.x.dim() - 1)
        self.x[w.pos[idx]] = torch.where(w.fooled[idx].view(view), w.x_best_adv[idx], w.x_best[idx])
        self.fooled[w.pos[idx]] = w.fooled[idx]
        self.loss[w.pos[idx]] = w.loss_best[idx]
        if w.beta is not None:
            self.beta[w.pos[idx]] = w.beta[idx].to(self.beta.dtype)


class APGD(Attack):
    """Auto-PGD (Croce & Hein 2020) with an optional attack temperature (APGD-CE++).

    Threat model: ``||x_adv − x||_p ≤ eps`` with p = ∞ or 2, inputs and outputs in [0, 1].

    Args:
        eps: radius of the threat model, in [0, 1] pixel units (e.g. 8/255 for L∞ on
            CIFAR-10, 0.1 on Fashion-MNIST; L2 radii are over the whole image).
        norm: ``"linf"`` or ``"l2"``.
        steps: iterations per run (100 in AutoAttack).
        restarts: random restarts; each runs on the samples still robust.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or ``"dlr_targeted"`` (APGD-T).
        n_target_classes: APGD-T only: how many target classes to try (the 2nd to the
            (n+1)-th most likely class of the clean input), capped at d − 1.
        temperature: ``None``, a float β, ``"njs"``, ``"hns"`` or a
            :class:`~bnnrobust.attacks.temperature.Temperature`; scales the logits before
            the loss at every step (started once per run, at its random-start point).
        rho: threshold ρ of checkpoint condition (a).
        surrogate: attack-time backward for sign activations (see ``surrogates``).
        seed: seed of the random starts; ``None`` uses torch's global generator.

    ``x_adv``: a misclassified iterate for every fooled sample, the highest-loss point of
    the last run elsewhere, the clean input for samples misclassified already.
    ``info`` of the output: ``"loss"`` (best loss of the last run that attacked the
    sample, 0 for samples never attacked), ``"fooled"`` (1.0 where x_adv is misclassified)
    and, with a temperature, ``"beta"`` (β of the sample's last step; 1 where never attacked).

    Example::

        >>> atk = APGD(eps=0.1, loss="ce", temperature="hns", seed=0)
        >>> x_adv = atk(model, x, y)
    """

    def __init__(
        self,
        eps: float,
        norm: str | Norm = "linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        n_target_classes: int = 9,
        temperature: None | float | str | Temperature = None,
        rho: float = 0.75,
        surrogate: str | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(surrogate=surrogate, seed=seed)
        self.norm = Norm.parse(norm)
        check_positive("eps", float(eps))
        self.eps = check_eps(eps, self.norm)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}.")
        if int(restarts) != restarts or restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {restarts!r}.")
        if int(n_target_classes) != n_target_classes or n_target_classes < 1:
            raise ValueError(f"n_target_classes must be a positive integer, got {n_target_classes!r}.")
        if not 0.0 < float(rho) <= 1.0:
            raise ValueError(f"rho must lie in (0, 1], got {rho!r}.")
        self.steps = int(steps)
        self.restarts = int(restarts)
        self.loss = check_loss_name(loss)
        self.n_target_classes = int(n_target_classes)
        self.rho = float(rho)
        self.temperature = make_temperature(temperature)
        if self.temperature is not None and self.loss != "ce":
            warnings.warn(
                f"APGD loss {self.loss!r} is a ratio of logit differences and does not change "
                f"under a per-sample temperature; temperature {self.temperature.name!r} has no "
                f"effect on it (use loss='ce').",
                stacklevel=2,
            )
        base = _NAMES[self.loss] + ("_l2" if self.norm is Norm.L2 else "")
        self.name = base if self.temperature is None else f"{base}++{self.temperature.name}"

    # ------------------------------------------------------------------ public helpers
    def describe(self) -> dict[str, object]:
        d = super().describe()
        if self.loss != "dlr_targeted":  # only the targeted loss uses target classes
            d.pop("n_target_classes")
        return d

    # ------------------------------------------------------------------ one run
    def _loss_grad(
        self, model: nn.Module, x_adv: Tensor, y: Tensor, target: Tensor | None, state: Any
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(logits, per-sample loss, input gradient, β) at ``x_adv``; all detached."""
        xa = x_adv.detach().requires_grad_(True)
        logits = model(xa)
        beta = None
        z = logits
        if self.temperature is not None:
            z, beta = self.temperature.scale(logits, y, state)
            beta = beta.detach()
        loss = per_sample_loss(self.loss, z, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), [xa])
        return logits.detach(), loss.detach(), grad.detach(), beta

    def _single_run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        generator: torch.Generator | None,
        temperature: Temperature | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One APGD run on a batch that is classified correctly (``temperature``: this
        call's prepared temperature, see :meth:`Temperature.prepare`).

        Returns ``(x_out, fooled, loss_best, beta)``, all of batch size B: ``x_out`` is a
        misclassified iterate where ``fooled`` and the best-loss point elsewhere.
        """
        n = x.shape[0]
        dev = x.device
        view = (-1,) + (1,) * (x.dim() - 1)
        checkpoints = set(apgd_checkpoints(self.steps))
        out = _RunOutput(x=torch.empty_like(x), fooled=torch.zeros(n, dtype=torch.bool, device=dev),
                         loss=torch.zeros(n, dtype=x.dtype, device=dev),
                         beta=torch.ones(n, dtype=x.dtype, device=dev))

        x_adv = self.norm.random_start(x, self.eps, generator, surface=True)
        state = None
        if temperature is not None:
            state = temperature.start(model, x_adv, y)
        logits, loss, grad, beta = self._loss_grad(model, x_adv, y, target, state)
        loss_best = loss.clone()
        w = _Working(  # the working samples' state, compacted at checkpoints
            pos=torch.arange(n, device=dev), x=x, y=y, target=target, x_adv=x_adv,
            x_old=x_adv.clone(), grad=grad, x_best=x_adv.clone(), grad_best=grad.clone(),
            x_best_adv=x_adv.clone(), loss_best=loss_best, fooled=logits.argmax(1) != y,
            step=torch.full((n,), 2.0 * self.eps, dtype=x.dtype, device=dev),
            hist=[loss.clone()], loss_best_last=loss_best.clone(),
            reduced_last=torch.ones(n, dtype=torch.bool, device=dev), beta=beta)
        last_check = -1
        compactable = True

        for i in range(self.steps):
            with torch.no_grad():
                a = 1.0 if i == 0 else 0.75
                eta = w.step.view(view)
                z = self.norm.project(w.x_adv + eta * self.norm.direction(w.grad), w.x, self.eps)
                x_new = self.norm.project(
                    w.x_adv + a * (z - w.x_adv) + (1 - a) * (w.x_adv - w.x_old), w.x, self.eps)
                w.x_old = w.x_adv
                w.x_adv = x_new
            logits, loss, w.grad, w.beta = self._loss_grad(model, w.x_adv, w.y, w.target, state)
            with torch.no_grad():
                wrong = logits.argmax(1) != w.y
                w.x_best_adv = torch.where(wrong.view(view), w.x_adv, w.x_best_adv)
                w.fooled = w.fooled | wrong
                better = loss > w.loss_best
                w.x_best = torch.where(better.view(view), w.x_adv, w.x_best)
                w.grad_best = torch.where(better.view(view), w.grad, w.grad_best)
                w.loss_best = torch.where(better, loss, w.loss_best)
                w.hist.append(loss.clone())

                if i in checkpoints:
                    self._step_size_check(w, i - last_check)
                    last_check = i
                    # drop fooled samples from the working batch
                    if compactable and bool(w.fooled.any()):
                        out.flush(w, w.fooled.nonzero().squeeze(1))
                        keep = (~w.fooled).nonzero().squeeze(1)
                        try:
                            new_state = _take(state, keep, w.fooled.shape[0])
                        except TypeError:
                            compactable = False
                        else:
                            state = new_state
                            w = w.take(keep)
                        if w.pos.numel() == 0:
                            break
        if w.pos.numel():
            out.flush(w, torch.arange(w.pos.numel(), device=dev))
        return out.x, out.fooled, out.loss, out.beta

    def _step_size_check(self, w: _Working, k: int) -> None:
        """APGD's checkpoint, ``k`` steps after the last one: halve the step size of the
        samples that meet condition (a) or (b) (module docstring) and restart them from
        their best point and its gradient."""
        view = (-1,) + (1,) * (w.x.dim() - 1)
        h = torch.stack(w.hist[-(k + 1):])  # k + 1 losses → k comparisons
        n_incr = (h[1:] > h[:-1]).sum(0).to(w.x.dtype)
        cond_a = n_incr <= k * self.rho
        cond_b = (~w.reduced_last) & (w.loss_best_last >= w.loss_best)
        reduce = cond_a | cond_b
        w.reduced_last = reduce
        w.loss_best_last = w.loss_best.clone()
        w.step = torch.where(reduce, w.step / 2.0, w.step)
        w.x_adv = torch.where(reduce.view(view), w.x_best, w.x_adv)
        w.grad = torch.where(reduce.view(view), w.grad_best, w.grad)
        w.hist = [w.hist[-1]]

    # ------------------------------------------------------------------ the attack
    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        with torch.no_grad():
            logits = model(x)
        check_labels(logits, y)
        d = logits.shape[1]
        need = {"ce": 2, "dlr": 3, "dlr_targeted": 4}[self.loss]
        if d < need:
            raise ValueError(f"{self.name}: loss {self.loss!r} needs at least {need} classes, the "
                             f"model has d={d}; use loss='ce' for models with fewer classes.")
        robust = logits.argmax(1) == y
        # this call's temperature (e.g. NJS without a fixed β1 calibrates on the clean batch)
        temperature = None if self.temperature is None else self.temperature.prepare(model, x)
        x_adv = x.clone()
        loss_out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        beta_out = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)

        if self.loss == "dlr_targeted":
            n_t = min(self.n_target_classes, d - 1)
            ranks: list[int | None] = list(range(1, n_t + 1))  # 0 = the true class if robust
            order = logits.argsort(dim=1, descending=True)
        else:
            ranks = [None]
            order = None

        for rank in ranks:
            for _ in range(self.restarts):
                idx = robust.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                target = None if rank is None else order[idx, rank]
                xs, fooled, loss_b, beta = self._single_run(model, x[idx], y[idx], target, generator,
                                                          temperature)
                x_adv[idx] = xs  # misclassified iterate where fooled, best-loss point elsewhere
                loss_out[idx] = loss_b
                beta_out[idx] = beta
                robust[idx[fooled]] = False

        info: dict[str, Tensor] = {"loss": loss_out, "fooled": (~robust).to(x.dtype)}
        if self.temperature is not None:
            info["beta"] = beta_out
        if not math.isfinite(float(x_adv.sum())):  # pragma: no cover - defensive
            raise RuntimeError(f"{self.name} produced non-finite adversarial examples.")
        return AttackOutput(x_adv, info)


# names of build_attack (bnnrobust.attacks.registry), in the order list_attacks() gives them
register_attack("apgd-ce", aliases=("apgd",), fixed={"loss": "ce"}, temperature=True,
                l2_variant=True, surrogate=True,
                description="our APGD-CE, 100 steps; APGD++ with a temperature")(APGD)
register_attack("apgd-dlr", fixed={"loss": "dlr"}, l2_variant=True, surrogate=True,
                description="our APGD-DLR (scale-invariant margin loss), 100 steps")(APGD)
register_attack("apgd-t", aliases=("apgd-ce-t",), fixed={"loss": "dlr_targeted"},
                l2_variant=True, surrogate=True,
                description="our APGD-T (targeted DLR over the top 9 other classes), 100 steps")(APGD)
