"""Temperature scaling of the logits for gradient attacks (PGD++ / FGSM++ / APGD++).

A gradient attack on a binary network often sees all-zero input gradients: the softmax
saturates (``p_y = 1`` in floating point), so the error signal ``ψ = p − onehot(y)``
vanishes. Scaling the logits by a temperature ``β > 0`` leaves every decision unchanged
(argmax is invariant) but can bring the softmax back into its sensitive range. Notation
(see ``algorithms.md``): ``f(x)`` logits (d classes), ``J = ∂f/∂x`` (d × N),
``p(β) = softmax(β f)``, ``S(β) = diag(p) − p pᵀ``.

Rules (one class each, all reusable by any gradient attack through the same two calls):

* :class:`FixedTemperature` — a given β for every sample and step.
* :class:`NJS` (Network Jacobian Scaling) — ``β1 = 1 / μ`` with μ the mean of all singular
  values of ``J(x_i)`` over the first ``n_jsv`` clean samples (model in eval mode). At every
  step and per sample, with ``z = β1 f(x_t)``, ``p = softmax(z)``, ``γ = max(z) − min(z)``:
  if ``p_y > 1 − ρ`` then ``z ← β2 z`` with ``β2 = −log(ρ / ((d−1)(1−ρ))) / γ`` (a constant,
  no gradient), else ``β2 = 1``. By Proposition 1 this bound is the largest temperature that
  keeps ``1 − p_y`` near ρ. ``γ = 0`` (all logits equal) gives ``β2 = 1``.
* :class:`Prop1Temperature` — Proposition 1's bound alone, per sample and step:
  ``β = −log(ρ / ((d−1)(1−ρ))) / γ`` (paper Table 13).
* :class:`HNS` (Hessian Norm Scaling) — per sample, once at the random-start point:
  ``γ = z_top1 − z_top2`` of the unscaled logits, ``β(ε) = −log(ε / ((1−ε)(d−1))) / γ``, a grid
  of ``n_grid`` β linearly spaced from ``β(1 − 1/d − 0.01)`` to ``β(eps_min = 1e−72)``, each
  scored by ``‖H(β)‖_F`` with ``H(β) = β² Jᵀ S(β) J`` (exact for piecewise-linear nets), and
  ``β* = argmax``. Fallback ``β* = 1`` for misclassified samples, ties (``γ = 0``), an argmax
  at the first or last grid point, and non-finite scores. The norm uses the d×d Gram matrix
  ``G = J Jᵀ``: ``‖Jᵀ S J‖_F² = tr(S G S G)`` — no N×N matrix is ever formed.

Protocol used by the attacks::

    t = t.prepare(model, x_clean)        # once per call: the rule for this call (NJS without
                                         # a fixed β1 returns a copy calibrated on clean x)
    state = t.start(model, x_start, y)   # once per run/restart, at the random-start point
    scaled, beta = t.scale(model(x_t), y, state)   # every step; loss on ``scaled``

The numbers behind NJS and Proposition 1 are computed in :mod:`bnnrobust.attacks.njs`, those
behind HNS (the Hessian norm, the β grid) in :mod:`bnnrobust.attacks.hns`; this module
re-exports their functions.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import Attack, check_positive, constructor_arguments
from bnnrobust.attacks.hns import (
    hessian_norm,
    hns_beta_from_gram,
    hns_beta_with_fallback,
    hns_temperature,
)
from bnnrobust.attacks.hns import hns_grid as hns_grid  # re-exported
from bnnrobust.attacks.jacobian import check_jacobian_space
from bnnrobust.attacks.njs import (
    calibrate_njs,
    njs_beta2,
    njs_temperature,
    prop1_beta,
)
from bnnrobust.attacks.njs import njs_bound as njs_bound  # re-exported
from bnnrobust.validation import positive_int

__all__ = [
    "HNS",
    "NJS",
    "TEMPERATURE_NAMES",
    "FixedTemperature",
    "Prop1Temperature",
    "Temperature",
    "TemperatureState",
    "calibrate_njs",
    "hessian_norm",
    "hns_beta_from_gram",
    "hns_temperature",
    "make_temperature",
    "njs_beta2",
    "njs_temperature",
    "njs_temperatures",
]


@dataclass
class TemperatureState:
    """What :meth:`Temperature.start` hands to :meth:`Temperature.scale` for one run.

    Attributes:
        beta: (B,) base temperature per sample (fixed β, NJS's β1, HNS's β*), float32/64.
        info: optional per-sample extras, e.g. HNS's ``"hns_fallback"`` (bool, (B,)).
    """

    beta: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)


class Temperature(ABC):
    """A rule that scales the logits before the attack loss. See the module docstring."""

    #: short name used in attack names (``"pgd++" + name``)
    name: str = "temperature"

    def prepare(self, model: nn.Module, x_clean: Tensor) -> Temperature:
        """The rule to use for one attack call on the clean batch ``x_clean`` (default: self).

        Rules that need a per-model value (NJS's β1) return a calibrated copy and leave
        ``self`` unchanged, so nothing is remembered between calls."""
        return self

    @abstractmethod
    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        """Once per attack run (restart), at the random-start point ``x``; model in eval mode."""

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        """Return ``(β·logits, β)`` with β (B,) detached; gradients flow through ``logits`` only."""
        beta = state.beta.to(device=logits.device)
        return logits * beta.to(logits.dtype)[:, None], beta.detach()

    #: the rule's name in ``describe()`` (None: :attr:`name`)
    describe_name: ClassVar[str | None] = None
    #: constructor arguments ``describe()`` leaves out: memory knobs that do not change β
    describe_omit: ClassVar[tuple[str, ...]] = ("chunk_size",)

    def describe(self) -> dict[str, object]:
        """JSON-serializable description: the name and every constructor argument the rule
        keeps under its own name (:func:`~bnnrobust.attacks.base.constructor_arguments`)."""
        return {"name": self.describe_name or self.name,
                **constructor_arguments(self, omit=self.describe_omit)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class FixedTemperature(Temperature):
    """The same temperature ``beta > 0`` for every sample and step."""

    describe_name = "fixed"

    def __init__(self, beta: float) -> None:
        if isinstance(beta, bool) or not isinstance(beta, int | float):
            raise TypeError(f"FixedTemperature needs a number beta > 0, got {beta!r}.")
        check_positive("Temperature beta", float(beta))
        if not math.isfinite(beta):
            raise ValueError(f"Temperature beta must be finite, got {beta!r}.")
        self.beta = float(beta)
        self.name = f"beta{self.beta:g}"

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        return TemperatureState(torch.full((x.shape[0],), self.beta, device=x.device))



# ----------------------------------------------------------------------------- NJS


def _check_beta1(beta1: float) -> float:
    if isinstance(beta1, bool) or not isinstance(beta1, int | float) \
            or not math.isfinite(beta1) or beta1 <= 0:
        raise ValueError(f"NJS beta1 must be a finite number > 0, got {beta1!r}.")
    return float(beta1)


class NJS(Temperature):
    """Network Jacobian Scaling (paper §5.1): β1 from Jacobian singular values, β2 per step.

    Args:
        n_jsv: number of clean samples whose Jacobian singular values define β1.
        rho: lower bound on ``1 − p_y`` targeted by β2 (0 < ρ < (d−1)/d).
        beta1: a fixed β1 > 0 (e.g. from :func:`calibrate_njs`); None: calibrate per call.
        chunk_size: samples per Jacobian forward (memory ∝ ``chunk_size * d``).
        jacobian_space: ``"normalized"`` (default: J with respect to the tensor after the
            model's ``Normalize``, as the authors' code does) or ``"pixel"`` ([0, 1] image).

    β1 is explicit: it is the ``beta1`` given here or set by :meth:`calibrate` (kept until
    :meth:`reset`), and ``describe()`` reports it. With ``beta1=None`` every attack call
    computes β1 afresh on the first ``n_jsv`` samples of its clean batch (:meth:`prepare`
    returns a calibrated copy; nothing is remembered, so no value can go stale when the
    weights change). The evaluation runner, the adversarial trainer and the robustness
    monitor calibrate explicitly on their reference samples.
    """

    name = "njs"
    describe_name = "njs"  # the variant (rho, pixel space) is in the described arguments

    def __init__(
        self,
        n_jsv: int = 100,
        rho: float = 0.01,
        *,
        beta1: float | None = None,
        chunk_size: int = 32,
        jacobian_space: str = "normalized",
    ) -> None:
        self.n_jsv = positive_int("n_jsv", n_jsv)
        self.jacobian_space = check_jacobian_space(jacobian_space)
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 < rho < 0.5:
            raise ValueError(f"NJS rho must be a number in (0, 0.5), got {rho!r}.")
        self.rho = float(rho)
        #: ``"njs"``; ``"njs_rho<ρ>"`` for a non-default ρ, ``"..._pixel"`` for pixel-space J,
        #: so attack names stay distinct
        self.name = "njs" if self.rho == 0.01 else f"njs_rho{self.rho:g}"
        if self.jacobian_space == "pixel":
            self.name += "_pixel"
        self.chunk_size = positive_int("chunk_size", chunk_size)
        self.beta1: float | None = None if beta1 is None else _check_beta1(beta1)

    def calibrate(self, model: nn.Module, x_ref: Tensor) -> float:
        """Set β1 from ``x_ref[:n_jsv]`` (clean samples) and return it; kept until :meth:`reset`."""
        self.beta1 = calibrate_njs(model, x_ref, self.n_jsv, chunk_size=self.chunk_size,
                                   jacobian_space=self.jacobian_space)
        return self.beta1

    def reset(self) -> None:
        """Forget β1 (attack calls then calibrate per call again)."""
        self.beta1 = None

    @property
    def calibrated(self) -> bool:
        return self.beta1 is not None

    def with_beta1(self, beta1: float) -> NJS:
        """A copy of this rule with β1 fixed to ``beta1``."""
        return NJS(self.n_jsv, self.rho, beta1=beta1, chunk_size=self.chunk_size,
                   jacobian_space=self.jacobian_space)

    def prepare(self, model: nn.Module, x_clean: Tensor) -> NJS:
        if self.beta1 is not None:
            return self
        return self.with_beta1(calibrate_njs(model, x_clean, self.n_jsv,
                                             chunk_size=self.chunk_size,
                                             jacobian_space=self.jacobian_space))

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        # an uncalibrated rule used without prepare(): β1 from this run's start batch
        beta1 = self.beta1 if self.beta1 is not None else self.prepare(model, x).beta1
        assert beta1 is not None
        return TemperatureState(torch.full((x.shape[0],), beta1, device=x.device))

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        beta1 = state.beta.to(device=logits.device)
        z = logits * beta1.to(logits.dtype)[:, None]
        beta2 = njs_beta2(z, y, self.rho)
        return z * beta2.to(z.dtype)[:, None], (beta1 * beta2.to(beta1.dtype)).detach()



def njs_temperatures(attack: Any, model: nn.Module) -> list[tuple[NJS, nn.Module]]:
    """The NJS temperatures inside an attack (and the attacks it wraps or chains), each with
    the model it attacks (a transfer attack's source model, else ``model``)."""
    found: list[tuple[NJS, nn.Module]] = []
    temp = getattr(attack, "temperature", None)
    if isinstance(temp, NJS):
        found.append((temp, model))
    inner = getattr(attack, "attack", None)
    if isinstance(inner, Attack):
        source = getattr(attack, "source_model", None)
        found += njs_temperatures(inner, source if isinstance(source, nn.Module) else model)
    members = getattr(attack, "attacks", None)
    if isinstance(members, Mapping):
        members = list(members.values())
    if isinstance(members, list | tuple):
        for member in members:
            if isinstance(member, Attack):
                found += njs_temperatures(member, model)
    return found


# ----------------------------------------------------------------------------- HNS


class HNS(Temperature):
    """Hessian Norm Scaling (paper §5.2): β* per sample at the start point, fixed for the run.

    Args:
        n_grid: number of β grid points (linear in β).
        eps_min: the smallest ``ε = 1 − p_y`` of the grid (its largest β).
        chunk_size: samples per Jacobian forward (memory ∝ ``chunk_size * d``).
    """

    name = "hns"

    def __init__(self, n_grid: int = 100, eps_min: float = 1e-72, *, chunk_size: int = 32) -> None:
        self.n_grid = positive_int("n_grid", n_grid)
        if self.n_grid < 3:
            raise ValueError(f"HNS n_grid must be >= 3, got {n_grid}.")
        if not isinstance(eps_min, int | float) or not 0.0 < eps_min < 0.49:
            raise ValueError(f"HNS eps_min must be a number in (0, 0.49), got {eps_min!r}.")
        self.eps_min = float(eps_min)
        self.chunk_size = positive_int("chunk_size", chunk_size)

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        beta, fallback = hns_beta_with_fallback(model, x, y, self.n_grid, self.eps_min,
                                                self.chunk_size)
        return TemperatureState(beta.to(torch.float32), {"hns_fallback": fallback})


# ----------------------------------------------------------------------------- Prop. 1


class Prop1Temperature(Temperature):
    """β from Proposition 1 alone (paper Table 13): per sample and step, no Jacobian factor.

    For a sample the current logits classify correctly, ``β = −log(ρ / ((d−1)(1−ρ))) / γ`` with
    ``γ = max(f) − min(f)`` of the unscaled logits: the temperature at which the top softmax
    probability is at most ``1 − ρ`` (reached when all other logits sit at the minimum).
    Unlike NJS's β2 it is applied at every step whatever ``p_y``. Misclassified samples,
    ``γ = 0`` and non-finite logits get β = 1.

    Args:
        rho: the bound on ``1 − p_y``, ``0 < ρ < (d−1)/d`` (the paper sweeps 1e-15 … 0.5).
    """

    describe_name = "prop1"

    def __init__(self, rho: float = 0.01) -> None:
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 < rho < 1.0:
            raise ValueError(
                f"Prop1Temperature rho must be a number in (0, (d-1)/d), got {rho!r}."
            )
        self.rho = float(rho)
        self.name = "prop1" if self.rho == 0.01 else f"prop1_rho{self.rho:g}"

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        return TemperatureState(torch.ones(x.shape[0], device=x.device))

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            zf = logits.detach().float()
            beta = prop1_beta(zf, self.rho, zf.argmax(dim=1) == y.to(zf.device).long())
        return logits * beta.to(logits.dtype)[:, None], beta.detach()



_NAMED: dict[str, type[Temperature]] = {"njs": NJS, "hns": HNS, "prop1": Prop1Temperature}
#: the dict form: {"name": <key>, <arguments>}; "fixed" takes "beta"
TEMPERATURE_NAMES: tuple[str, ...] = ("njs", "hns", "prop1", "fixed")


def make_temperature(
    spec: None | float | int | str | Mapping[str, Any] | Temperature,
) -> Temperature | None:
    """Build a temperature rule from a spec.

    Accepted: ``None`` or ``"none"`` (no scaling), a number ``> 0`` or a numeric string
    (``2.5``, ``"2.5"``: :class:`FixedTemperature`), ``"njs"``, ``"hns"``, ``"prop1"``
    (defaults), a dict ``{"name": "njs", "rho": 1e-5}`` / ``{"name": "hns", "n_grid": 50}`` /
    ``{"name": "prop1", "rho": 0.1}`` / ``{"name": "fixed", "beta": 2.0}`` (what YAML configs
    use), or a :class:`Temperature` instance (returned as is).
    """
    accepted = ("None, a number > 0 (fixed beta), 'njs', 'hns', 'prop1', a dict such as "
                "{'name': 'njs', 'rho': 1e-5}, or a Temperature instance")
    if spec is None or isinstance(spec, Temperature):
        return spec
    if isinstance(spec, Mapping):
        return _temperature_from_dict(spec)
    if isinstance(spec, bool):
        raise ValueError(f"Unknown temperature {spec!r}; accepted: {accepted}.")
    if isinstance(spec, int | float):
        if not spec > 0 or not math.isfinite(spec):
            raise ValueError(f"A fixed temperature must be a finite number > 0, got {spec!r}.")
        return FixedTemperature(float(spec))
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in ("none", ""):
            return None
        if key in _NAMED:
            return _NAMED[key]()
        try:
            value = float(key)
        except ValueError:
            pass
        else:
            return make_temperature(value)
    raise ValueError(f"Unknown temperature {spec!r}; accepted: {accepted}.")


def _temperature_from_dict(spec: Mapping[str, Any]) -> Temperature:
    name = str(spec.get("name", "")).strip().lower()
    if name not in TEMPERATURE_NAMES:
        raise ValueError(
            f"A temperature dict needs 'name' in {', '.join(TEMPERATURE_NAMES)}, got {dict(spec)!r}; "
            "e.g. {'name': 'njs', 'rho': 1e-5}."
        )
    cls: type[Temperature] = FixedTemperature if name == "fixed" else _NAMED[name]
    kwargs = {k: _number_or_str(v) for k, v in spec.items() if k != "name"}
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in accepted:
            raise ValueError(
                f"Unknown argument {key!r} for temperature {name!r}; accepted: "
                f"{', '.join(accepted)}."
            )
    return cls(**kwargs)


def _number_or_str(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` as a string: turn numeric strings into floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
