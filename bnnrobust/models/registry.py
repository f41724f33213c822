"""timm-style model registry: ``@register_model``, ``create_model(name, ...)``, ``list_models``.

Adding an architecture = one file with a class decorated ``@register_model("name")`` plus
one import line in ``bnnrobust/models/__init__.py``.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import nn

from bnnrobust.binarize import Binarizer, make_binarizer

__all__ = ["register_model", "create_model", "list_models", "MODEL_REGISTRY"]

#: name -> model class (or factory function) taking the common keyword arguments.
MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

T = TypeVar("T", bound=Callable[..., nn.Module])


def register_model(name: str | T | None = None) -> Any:
    """Register a model class/factory under ``name`` (default: its lower-cased ``__name__``).

    Use as ``@register_model`` or ``@register_model("mobilenet_v2")``. The entry must take
    ``num_classes, in_channels, width, binarizer, keep_first_last, mean, std``.
    """

    def decorator(fn: T) -> T:
        key = (name if isinstance(name, str) else fn.__name__).lower()
        if key in MODEL_REGISTRY and MODEL_REGISTRY[key] is not fn:
            raise ValueError(
                f"Model name {key!r} is already registered to {MODEL_REGISTRY[key]!r}."
            )
        MODEL_REGISTRY[key] = fn
        return fn

    if callable(name) and not isinstance(name, str):
        return decorator(name)
    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the fnmatch ``pattern`` (e.g. ``"*resnet*"``), sorted."""
    return sorted(n for n in MODEL_REGISTRY if fnmatch.fnmatch(n, pattern.lower()))


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    binarizer: str | Binarizer = "none",
    keep_first_last: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **binarizer_args: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (case-insensitive; ``-`` works as ``_``).
        num_classes: number of output logits d.
        in_channels: input channels (1 grey, 3 RGB).
        width: channel multiplier (> 0); every layer keeps at least 1 channel.
        binarizer: ``"none"``, ``"bc"``, ``"gd_tanh"``, ``"md_tanh_s"``, ``"hubara"`` or a
            :class:`Binarizer`.
        keep_first_last: keep the first conv and the last linear float.
        mean, std: per-channel normalization in [0, 1] pixel units; when given, a
            ``Normalize`` module is the model's first module (inputs stay in [0, 1]).
        **binarizer_args: arguments of the architecture itself (e.g. ConvNet's ``hidden``,
            ``affine_bn``, ``float_bias``), then binarizer arguments (e.g. ``growth=1.02,
            interval=200``); ones that neither takes raise ``ValueError``.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in MODEL_REGISTRY:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}.")
    if (
        isinstance(width, bool)
        or not isinstance(width, int | float)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(
            f"create_model({name!r}): width must be a finite number > 0, got {width!r}."
        )
    cls = MODEL_REGISTRY[key]
    own = set(inspect.signature(cls).parameters) - {
        "num_classes", "in_channels", "width", "binarizer", "keep_first_last", "mean", "std"}
    model_args = {k: binarizer_args.pop(k) for k in list(binarizer_args) if k in own}
    bin_ = make_binarizer(binarizer, **binarizer_args)
    return cls(
        **model_args,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        binarizer=bin_,
        keep_first_last=keep_first_last,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
    )
