"""Binarizers: how a binary layer turns its latent real weights ``u`` into used weights ``w``.

One object per model is shared by all its binary layers (it is registered as their
``binarizer`` submodule, so its state, e.g. ``tanh_scale``, is saved in checkpoints)::

    | name        | training forward | backward                         | eval     | after each step  |
    |-------------|------------------|----------------------------------|----------|------------------|
    | ``none``    | w = u            | exact                            | w = u    | -                |
    | ``bc``      | w = sign(u)      | STE, zero where abs(u) > 1       | sign(u)  | clip u to [-1,1] |
    | ``gd_tanh`` | w = tanh(s·u)    | exact chain rule                 | sign(u)  | anneal s         |
    | ``md_tanh_s``| w = tanh(s·u)   | full STE (∂L/∂u = ∂L/∂w)         | sign(u)  | anneal s         |
    | ``hubara``  | w = sign(u), activations sign(x) | STE (weights); activations gated by abs(x) <= 1 | same | clip u |

``sign(0) = +1``. The annealed scale ``s`` is called ``tanh_scale`` (never β, which is the
attack temperature): ``s = tanh_scale_start · growth ** (step // interval)``, capped at
``max_scale`` (1e35), where ``step`` counts optimizer steps.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Iterable
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from bnnrobust.binarize.functions import ClippedSTESign, IdentitySTESign, TanhSTE
from bnnrobust.validation import finite_number

__all__ = [
    "Binarizer",
    "NoBinarizer",
    "BC",
    "GDTanh",
    "MDTanhS",
    "Hubara",
    "BINARIZERS",
    "make_binarizer",
]


class Binarizer(nn.Module):
    """Base class: maps latent weights to the weights a binary layer uses.

    Subclasses set ``name`` and implement :meth:`quantize`. Flags:
    ``is_binary`` (False only for :class:`NoBinarizer`), ``binarize_activations`` (Hubara's
    sign activations) and ``clip_latent`` (latent weights clipped to [-1, 1] after each
    optimizer step).
    """

    name: ClassVar[str] = "binarizer"
    is_binary: ClassVar[bool] = True
    binarize_activations: ClassVar[bool] = False
    clip_latent: bool = False

    def quantize(self, latent: Tensor, training: bool) -> Tensor:
        """Return the weight (or bias) the layer uses, given latent values ``latent``."""
        raise NotImplementedError

    def forward(self, latent: Tensor, training: bool = True) -> Tensor:  # noqa: D102
        return self.quantize(latent, training)

    def on_optimizer_step(
        self, model_or_modules: nn.Module | Iterable[nn.Module], step: int
    ) -> None:
        """Update state after optimizer step number ``step`` (1 after the first step).

        Anneals ``tanh_scale`` (tanh binarizers) and clips the latent weights and biases of
        the layers in ``model_or_modules`` that use this binarizer (BC, Hubara). Idempotent
        for a given ``step``.
        """
        if self.clip_latent:
            self.clip_(model_or_modules)

    @torch.no_grad()
    def clip_(self, model_or_modules: nn.Module | Iterable[nn.Module]) -> None:
        """Clip latent weights/biases of layers using this binarizer to [-1, 1], in place."""
        for layer in _layers_of(self, model_or_modules):
            cast(Tensor, layer.weight).clamp_(-1.0, 1.0)
            if getattr(layer, "bias", None) is not None and getattr(layer, "binarize_bias", True):
                cast(Tensor, layer.bias).clamp_(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _layers_of(
    binarizer: Binarizer, model_or_modules: nn.Module | Iterable[nn.Module]
) -> list[nn.Module]:
    modules = (
        model_or_modules.modules() if isinstance(model_or_modules, nn.Module) else model_or_modules
    )
    return [
        m for m in modules if getattr(m, "binarizer", None) is binarizer and hasattr(m, "weight")
    ]


class NoBinarizer(Binarizer):
    """Float reference (REF): ``w = u`` in training and eval, exact gradients."""

    name: ClassVar[str] = "none"
    is_binary: ClassVar[bool] = False

    def quantize(self, latent: Tensor, training: bool) -> Tensor:
        return latent


class BC(Binarizer):
    """BinaryConnect: ``w = sign(u)``; STE zeroed where ``|u| > 1``; latent clipped to [-1, 1].

    Args:
        clip_latent: clip latent weights and biases to [-1, 1] after each optimizer step.
    """

    name: ClassVar[str] = "bc"

    def __init__(self, clip_latent: bool = True) -> None:
        super().__init__()
        self.clip_latent = clip_latent

    def quantize(self, latent: Tensor, training: bool) -> Tensor:
        return ClippedSTESign.apply(latent)


class _TanhBinarizer(Binarizer):
    """Shared annealing of ``tanh_scale`` for the tanh binarizers."""

    tanh_scale: Tensor  # registered 0-d buffer

    def __init__(
        self,
        tanh_scale_start: float = 1.0,
        growth: float = 1.02,
        interval: int = 200,
        max_scale: float = 1e35,
    ) -> None:
        super().__init__()
        finite_number(f"Binarizer {self.name!r}: tanh_scale_start", tanh_scale_start)
        finite_number(f"Binarizer {self.name!r}: max_scale", max_scale)
        if not (math.isfinite(growth) and growth >= 1.0):
            raise ValueError(
                f"Binarizer {self.name!r}: growth must be a finite number >= 1, got {growth!r}."
            )
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f"Binarizer {self.name!r}: interval must be an integer >= 1 (optimizer steps), got {interval!r}."
            )
        self.tanh_scale_start = float(tanh_scale_start)
        self.growth = float(growth)
        self.interval = interval
        self.max_scale = float(max_scale)
        # 0-d buffer: saved in checkpoints and moved with the model.
        self.register_buffer("tanh_scale", torch.tensor(min(self.tanh_scale_start, self.max_scale)))
        self._cached_scale: float | None = None

    def scale_at(self, step: int) -> float:
        """The ``tanh_scale`` after ``step`` optimizer steps (capped at ``max_scale``)."""
        n = max(step, 0) // self.interval
        if math.log(self.tanh_scale_start) + n * math.log(self.growth) >= math.log(self.max_scale):
            return self.max_scale
        return self.tanh_scale_start * self.growth**n

    def on_optimizer_step(
        self, model_or_modules: nn.Module | Iterable[nn.Module], step: int
    ) -> None:
        value = self.scale_at(step)
        if value != self._cached_scale:
            self.tanh_scale.fill_(value)
            self._cached_scale = value
        super().on_optimizer_step(model_or_modules, step)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, tanh_scale_start={self.tanh_scale_start}, growth={self.growth}, "
            f"interval={self.interval}, max_scale={self.max_scale:g}"
        )


class GDTanh(_TanhBinarizer):
    """GD-tanh: ``w = tanh(s·u)`` with the exact gradient ``s·(1 − tanh²(s·u))``; eval ``sign(u)``.

    Args:
        tanh_scale_start: initial scale s (dimensionless).
        growth: s is multiplied by ``growth`` every ``interval`` optimizer steps.
        interval: annealing interval in optimizer steps.
        max_scale: cap on s.
    """

    name: ClassVar[str] = "gd_tanh"

    def quantize(self, latent: Tensor, training: bool) -> Tensor:
        if not training:
            return IdentitySTESign.apply(latent)
        return torch.tanh(latent * self.tanh_scale.to(latent.dtype))


class MDTanhS(_TanhBinarizer):
    """MD-tanh-S (BNN-WQ): ``w = tanh(s·u)`` with full STE ``∂L/∂u = ∂L/∂w``; eval ``sign(u)``.

    Args:
        tanh_scale_start: initial scale s (dimensionless).
        growth: s is multiplied by ``growth`` every ``interval`` optimizer steps.
        interval: annealing interval in optimizer steps.
        max_scale: cap on s.
    """

    name: ClassVar[str] = "md_tanh_s"

    def quantize(self, latent: Tensor, training: bool) -> Tensor:
        if not training:
            return IdentitySTESign.apply(latent)
        return TanhSTE.apply(latent, self.tanh_scale.to(latent.dtype))


class Hubara(Binarizer):
    """Hubara et al. BNN (BNN-WAQ): sign weights (STE) and sign activations (STE gated by ``|x| <= 1``).

    The models replace ReLU by :class:`~bnnrobust.binarize.SignActivation`; the first layer
    sees the real image. Latent weights are clipped to [-1, 1] after each optimizer step.

    Args:
        clip_latent: clip latent weights and biases to [-1, 1] after each optimizer step.
    """

    name: ClassVar[str] = "hubara"
    binarize_activations: ClassVar[bool] = True

    def __init__(self, clip_latent: bool = True) -> None:
        super().__init__()
        self.clip_latent = clip_latent

    def quantize(self, latent: Tensor, training: bool) -> Tensor:
        return IdentitySTESign.apply(latent)


#: Binarizers by name.
BINARIZERS: dict[str, type[Binarizer]] = {
    cls.name: cls for cls in (NoBinarizer, BC, GDTanh, MDTanhS, Hubara)
}
_ALIASES = {
    "ref": "none",
    "float": "none",
    "binaryconnect": "bc",
    "bnn_wq": "md_tanh_s",
    "bnn_waq": "hubara",
}


def _accepted_args(cls: type[Binarizer]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self"]


def _instantiate(cls: type[Binarizer], kwargs: dict[str, Any]) -> Binarizer:
    accepted = _accepted_args(cls)
    bad = [k for k in kwargs if k not in accepted]
    if bad:
        raise ValueError(
            f"Binarizer {cls.name!r} does not accept argument(s) {bad}; accepted arguments: "
            f"{accepted or 'none'}."
        )
    return cls(**kwargs)


def _resolve_class_path(path: str) -> type[Binarizer]:
    module_name, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"Cannot import binarizer class {path!r} ({err}). Accepted names: "
            f"{', '.join(BINARIZERS)}, or an importable Binarizer subclass path."
        ) from err
    if not (isinstance(obj, type) and issubclass(obj, Binarizer)):
        raise ValueError(f"{path!r} is not a bnnrobust.binarize.Binarizer subclass.")
    return obj


def make_binarizer(
    spec: str | Binarizer | type[Binarizer] | dict[str, Any] | None = "none", **kwargs: Any
) -> Binarizer:
    """Build a binarizer from a name, an instance, a class, a class path or a config dict.

    Args:
        spec: ``"none"``, ``"bc"``, ``"gd_tanh"``, ``"md_tanh_s"``, ``"hubara"`` (case and
            ``-``/``_`` insensitive; aliases ``ref``, ``bnn_wq``, ``bnn_waq``); a
            :class:`Binarizer` instance (returned as is); a subclass or its dotted path; or a
            ``{"class_path": ..., "init_args": {...}}`` dict. ``None`` means ``"none"``.
        **kwargs: constructor arguments (e.g. ``growth=1.05`` for ``md_tanh_s``). An argument
            the binarizer does not take raises ``ValueError`` listing the accepted ones.
    """
    if spec is None:
        spec = "none"
    if isinstance(spec, Binarizer):
        if kwargs:
            raise ValueError(
                f"Binarizer arguments {sorted(kwargs)} were given together with an already built "
                f"binarizer {spec!r}; pass a name (e.g. 'md_tanh_s') instead, or configure the instance."
            )
        return spec
    if isinstance(spec, dict):
        if "class_path" not in spec:
            raise ValueError(f"A binarizer dict needs a 'class_path' key, got keys {sorted(spec)}.")
        init_args = {**dict(spec.get("init_args") or {}), **kwargs}
        return make_binarizer(spec["class_path"], **init_args)
    if isinstance(spec, type) and issubclass(spec, Binarizer):
        return _instantiate(spec, kwargs)
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in BINARIZERS:
            return _instantiate(BINARIZERS[key], kwargs)
        if "." in spec:
            return _instantiate(_resolve_class_path(spec), kwargs)
        raise ValueError(
            f"Unknown binarizer {spec!r}. Accepted names: {', '.join(BINARIZERS)} "
            f"(aliases: {', '.join(_ALIASES)}), a Binarizer instance or class path."
        )
    raise TypeError(
        f"binarizer must be a name, a Binarizer instance/class or a class_path dict, got "
        f"{type(spec).__name__}: {spec!r}. Accepted names: {', '.join(BINARIZERS)}."
    )
