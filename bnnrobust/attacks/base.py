"""The contract every attack of bnnrobust follows.

An attack maps a model (any ``nn.Module`` taking images in [0, 1] and returning logits),
a batch of images ``x`` (B, C, H, W) in [0, 1] and integer labels ``y`` (B,) to adversarial
images ``x_adv`` of the same shape. Attacks know nothing of Lightning.

Every attack, through :meth:`Attack.perturb`:

* checks its inputs (images inside [0, 1], labels inside the number of classes read
  from the logits) and fails with a message naming the bad value;
* runs under ``torch.enable_grad()`` (so it works inside ``torch.no_grad()`` and in
  Lightning's validation/test loops with ``inference_mode=False``);
* puts the model in eval mode for the attack and afterwards restores every submodule's
  own ``training`` flag (see :func:`eval_mode`);
* optionally swaps the backward of sign activations for an attack-time surrogate
  gradient (see :mod:`bnnrobust.attacks.surrogates`); the forward pass is untouched;
* takes device and dtype from the input at call time, never at construction;
* takes gradients with respect to the input only (``torch.autograd.grad``), so the
  parameters' ``.grad`` are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import ClassVar

import torch
from torch import Tensor, nn

from bnnrobust.validation import check_positive as check_positive  # re-exported


def flat_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm over all non-batch dims, shaped (B, 1, ..., 1) for broadcasting."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


#: the smallest norm an L2 step or projection divides by (a zero gradient stays zero)
_TINY = 1e-30


class Norm(StrEnum):
    """Threat models: the norm that bounds the perturbation, and its geometry.

    The geometry every attack uses (PGD, FGSM, APGD): :meth:`project` onto the eps ball and
    [0, 1], :meth:`random_start` inside the ball or on its surface, :meth:`direction` of
    the steepest-ascent step. ``eps`` is in [0, 1] pixel units (a scalar, or a per-sample
    tensor broadcastable to the images for the step).
    """

    LINF = "linf"
    L2 = "l2"

    @classmethod
    def parse(cls, value: str | Norm) -> Norm:
        try:
            return cls(value.lower() if isinstance(value, str) else value)
        except ValueError:
            accepted = ", ".join(repr(n.value) for n in cls)
            raise ValueError(f"Unknown norm {value!r}; accepted: {accepted}.") from None

    def project(self, x_new: Tensor, x: Tensor, eps: float) -> Tensor:
        """``x_new`` projected onto the eps ball around ``x``, then clipped to [0, 1] (which
        stays inside the ball); a new tensor."""
        delta = x_new - x
        if self is Norm.LINF:
            delta = delta.clamp_(-eps, eps)
        else:
            n = flat_norm(delta)
            delta = delta * torch.where(n > eps, eps / n.clamp_min(_TINY), 1.0)
        return (x + delta).clamp_(0, 1)

    def direction(self, grad: Tensor) -> Tensor:
        """The steepest-ascent direction of unit norm: ``sign(g)`` for L∞, ``g / ‖g‖₂`` for
        L2 (per sample); a zero gradient gives a zero direction."""
        if self is Norm.LINF:
            return grad.sign()
        return grad / flat_norm(grad).clamp_min(_TINY)

    def random_start(self, x: Tensor, eps: float, generator: torch.Generator | None,
                     surface: bool = False) -> Tensor:
        """A random point of the eps ball around ``x``, clipped to [0, 1].

        ``surface=False`` (PGD, as torchattacks): uniform in the L∞ cube; for L2 a uniform
        direction at a radius uniform in [0, eps]. ``surface=True`` (APGD, as AutoAttack):
        the same draws scaled onto the ball's surface (L∞: the largest coordinate at eps;
        L2: radius eps).
        """
        dev, dt = x.device, x.dtype
        if self is Norm.LINF:
            t = 2 * torch.rand(x.shape, generator=generator, device=dev, dtype=dt) - 1
            if surface:
                t = t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(
                    -1, *([1] * (x.dim() - 1)))
        else:
            u = torch.randn(x.shape, generator=generator, device=dev, dtype=dt)
            t = u / flat_norm(u).clamp_min(1e-12)
            if not surface:
                r = torch.rand(x.shape[:1], generator=generator, device=dev, dtype=dt)
                t = t * r.view(-1, *([1] * (x.dim() - 1)))
        return (x + eps * t).clamp_(0, 1)


def described(value: object) -> object:
    """``value`` as a JSON-ready description: enums as their value, attacks and temperatures
    as their ``describe()``, modules as their class name, lists element by element."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [described(v) for v in value]
    if isinstance(value, nn.Module):
        return type(value).__name__
    describe = getattr(value, "describe", None)
    return describe() if callable(describe) else value


def constructor_arguments(obj: object, omit: tuple[str, ...] = ()) -> dict[str, object]:
    """Each parameter of ``type(obj).__init__`` that ``obj`` keeps as an attribute of the same
    name (in signature order, :func:`described`), except those in ``omit``: what ``describe()``
    reports, derived from the signature so that a new argument cannot be forgotten."""
    params = inspect.signature(type(obj).__init__).parameters.values()
    return {p.name: described(getattr(obj, p.name)) for p in params
            if p.name != "self" and p.name not in omit and hasattr(obj, p.name)
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@dataclass
class AttackOutput:
    """What an attack run returns.

    Attributes:
        x_adv: adversarial images, same shape, dtype and device as the input, in [0, 1].
        info: per-sample extras keyed by name, each a tensor of shape (B,) on the input's
            device, e.g. ``"beta"`` (the temperature used for each sample by a ++ attack),
            ``"loss"`` (final loss per sample). May be empty.
    """

    x_adv: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore each submodule's own flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def check_inputs(x: Tensor, y: Tensor) -> None:
    """Validate an attack's inputs: float images in [0, 1], integer labels of shape (B,)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"Attack input x must be a floating point tensor, got {type(x).__name__}"
                        f"{'' if not torch.is_tensor(x) else ' of dtype ' + str(x.dtype)}.")
    if x.dim() < 2:
        raise ValueError(f"Attack input x must have a batch dimension, got shape {tuple(x.shape)}.")
    if x.numel() > 0:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0 or not (lo == lo and hi == hi):
            raise ValueError(
                f"Attack inputs must be images in [0, 1] pixel units (normalization belongs inside "
                f"the model), got values in [{lo:.4g}, {hi:.4g}]."
            )
    if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"Attack labels y must be an integer tensor, got {getattr(y, 'dtype', type(y))}.")
    if y.shape != x.shape[:1]:
        raise ValueError(f"Labels y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}.")


def check_labels(logits: Tensor, y: Tensor) -> None:
    """Labels must lie in [0, d) where d is read from the logits (never a default of 10)."""
    d = logits.shape[-1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= d):
        raise ValueError(
            f"Labels must lie in [0, {d - 1}] for a model with {d} classes, "
            f"got values in [{int(y.min())}, {int(y.max())}]."
        )


def check_logits(logits: Tensor, y: Tensor | None = None, *, where: str = "",
                 num_classes: int | None = None) -> None:
    """A broken model is an error, never a plausible accuracy.

    Refuses NaN/inf logits (argmax of NaN is class 0, which scores like a guess), a logit
    count that differs from the data's ``num_classes``, and labels outside ``[0, d)``.
    ``where`` names the samples in the message (e.g. ``"the batch starting at sample 256"``).
    """
    at = f" on {where}" if where else ""
    bad = ~torch.isfinite(logits).all(dim=-1) if logits.dim() > 1 else ~torch.isfinite(logits)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"The model returned non-finite logits (NaN or inf){at}: {int(bad.sum())} of "
            f"{bad.numel()} samples (rows {rows}). A broken network is not evaluated; check its "
            "weights (e.g. a diverged training run) and its inputs.")
    d = logits.shape[-1]
    if num_classes is not None and d != num_classes:
        raise ValueError(f"The model outputs {d} logits, but the data has {num_classes} classes"
                         f"{at}; the network was built for another dataset.")
    if y is not None:
        check_labels(logits, y)


def check_eps(eps: float, norm: object) -> float:
    """``eps`` as a float after checking it is a radius in [0, 1] pixel units.

    An L∞ radius above 1 covers the whole image cube, so it almost always means the value was
    given in 0-255 units: the error suggests ``eps/255``. An L2 radius may exceed 1 (e.g. 1.5
    on Fashion-MNIST); it is checked against the image size when the attack runs
    (:func:`check_l2_eps`).
    """
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        raise TypeError(f"eps must be a number in [0, 1] pixel units, got {eps!r}.")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"eps must be a finite number >= 0 in [0, 1] pixel units, got {eps!r}.")
    if str(getattr(norm, "value", norm)).lower() in ("linf", "inf") and value > 1:
        raise ValueError(
            f"eps={value:g} is larger than 1, but an L∞ eps is in [0, 1] pixel units (images are "
            f"scaled to [0, 1]); a value in 0-255 units must be divided by 255: "
            f"eps={value:g}/255 = {value / 255:.6g}.")
    return value


def check_l2_eps(eps: float, x: Tensor) -> None:
    """An L2 radius larger than the diameter of the [0, 1] image cube (√d) is a unit mistake."""
    d = x[0].numel() if x.shape[0] else 0
    if d and eps > math.sqrt(d):
        raise ValueError(
            f"L2 eps {eps!r} is larger than the diameter √{d} = {math.sqrt(d):.4g} of the [0, 1] "
            "image cube, so every image is within reach: eps is in [0, 1] pixel units (divide a "
            "value in 0-255 units by 255).")


class Attack(ABC):
    """Base class: subclasses implement :meth:`_perturb`; users call the instance.

    Args:
        surrogate: attack-time backward for sign activations (``None`` keeps the
            model's training straight-through estimator). See
            :mod:`bnnrobust.attacks.surrogates` for the accepted names.
        seed: seed of the attack's own random generator (random starts, Square's
            proposals). ``None`` draws from torch's global generator.
    """

    #: short name used in tables and logs; subclasses override
    name: str = "attack"

    def __init__(self, surrogate: str | None = None, seed: int | None = None) -> None:
        if surrogate is not None:
            from bnnrobust.attacks.surrogates import check_surrogate_name

            check_surrogate_name(surrogate)
        self.surrogate = surrogate
        self.seed = seed

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.perturb(model, x, y).x_adv

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackOutput:
        """Run the attack with all the guarantees listed in the module docstring."""
        check_inputs(x, y)
        if getattr(self, "norm", None) is Norm.L2 and isinstance(getattr(self, "eps", None), float):
            check_l2_eps(float(self.eps), x)  # type: ignore[attr-defined]
        from bnnrobust.attacks.surrogates import use_surrogate

        # Under torch.inference_mode() (e.g. Lightning's Trainer(inference_mode=True) test loop)
        # autograd is off even inside enable_grad(): step out of it locally and work on normal
        # copies of the (inference) input tensors. The parameters must be normal tensors.
        with torch.inference_mode(False):
            x = x.clone() if x.is_inference() else x.detach()
            y = (y.clone() if y.is_inference() else y.detach()).long()
            if x.shape[0] == 0:
                return AttackOutput(x.clone())
            with eval_mode(model), torch.enable_grad(), use_surrogate(model, self.surrogate):
                out = self._perturb(model, x, y, self._generator(x.device))
            out.x_adv = out.x_adv.detach()
        return out

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed))
        return g

    @abstractmethod
    def _perturb(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None
    ) -> AttackOutput:
        """Attack a validated batch; the model is already in eval mode with grad enabled."""

    #: constructor arguments ``describe()`` leaves out (none: every argument that changes
    #: the result is part of the description)
    describe_omit: ClassVar[tuple[str, ...]] = ()

    def describe(self) -> dict[str, object]:
        """JSON-serializable description: ``name``, every constructor argument the attack
        keeps under its own name (:func:`constructor_arguments`; eps in [0, 1] pixel units),
        ``surrogate`` (``"training"`` = the model's own backward) and ``seed``."""
        d: dict[str, object] = {"name": self.name}
        d.update(constructor_arguments(self, omit=self.describe_omit))
        d.update(surrogate=self.surrogate or "training", seed=self.seed)
        return d

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"
