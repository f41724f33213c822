"""Convert any PyTorch model (torchvision, timm, your own) into a BNN.

``binarize_model(model, "bc")`` returns a deep copy whose ``nn.Conv2d``/``nn.Linear`` layers are
:class:`BinaryConv2d`/:class:`BinaryLinear` (weights copied as latent values). For
``"hubara"`` the activations (ReLU, ReLU6, Hardtanh, GELU, SiLU and their timm twins) become
:class:`SignActivation`, so the first layer still sees the real image.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from torch import nn

from bnnrobust.binarize.binarizers import Binarizer, make_binarizer
from bnnrobust.binarize.layers import BinaryConv2d, BinaryLinear, SignActivation

__all__ = ["binarize_model", "binary_modules", "sign_activations", "ACTIVATIONS"]

#: Activation classes swapped for SignActivation by the Hubara binarizer (matched by type,
#: and by class name for library re-implementations such as timm's).
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU)
_ACTIVATION_NAMES = {"ReLU", "ReLU6", "Hardtanh", "GELU", "GELUTanh", "SiLU", "Swish", "QuickGELU"}


def binary_modules(model: nn.Module) -> list[BinaryConv2d | BinaryLinear]:
    """The layers of ``model`` whose weights are binarized (binarizer other than ``none``)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, BinaryConv2d | BinaryLinear) and m.binarizer.is_binary
    ]


def sign_activations(model: nn.Module) -> list[SignActivation]:
    """The :class:`SignActivation` modules of ``model`` (Hubara's binary activations)."""
    return [m for m in model.modules() if isinstance(m, SignActivation)]


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATIONS) or type(module).__name__ in _ACTIVATION_NAMES


def binarize_model(
    model: nn.Module,
    binarizer: str | Binarizer = "bc",
    keep_first_last: bool = False,
    **binarizer_args: Any,
) -> nn.Module:
    """Return a binarized deep copy of ``model`` (the input model is left untouched).

    Args:
        model: any ``nn.Module``. Layers of exactly type ``nn.Conv2d``/``nn.Linear`` are
            swapped; subclasses with their own forward (e.g. timm's ``Conv2dSame``) are kept
            float with a warning, since swapping them would change their behaviour.
        binarizer: a name (``"none"``, ``"bc"``, ``"gd_tanh"``, ``"md_tanh_s"``,
            ``"hubara"``), a :class:`Binarizer` or class path; one instance is shared by all
            layers.
        keep_first_last: keep the first conv/linear and the last linear layer (in module
            registration order) float. Default False: every layer is binarized, as in the
            authors' BNN-WQ.
        **binarizer_args: binarizer arguments, e.g. ``growth=1.02, interval=200``.

    BatchNorm layers are left as they are (the zoo models use ``affine=False`` BatchNorm
    when binarized; converted models keep their own).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"binarize_model() needs an nn.Module, got {type(model).__name__}.")
    bin_ = make_binarizer(binarizer, **binarizer_args)
    already = binary_modules(model)
    if already:
        raise ValueError(
            f"The model is already binarized ({len(already)} binary layers, e.g. "
            f"{type(already[0]).__name__} with binarizer {already[0].binarizer.name!r}); "
            "binarize the float model instead."
        )
    model = copy.deepcopy(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    keep: set[str] = set()
    if keep_first_last and layers:
        keep.add(layers[0][0])
        linears = [n for n, m in layers if isinstance(m, nn.Linear)]
        keep.add(linears[-1] if linears else layers[-1][0])
    skipped: list[str] = []
    replacements: dict[str, nn.Module] = {}
    for name, module in layers:
        if name in keep or isinstance(module, BinaryConv2d | BinaryLinear):
            continue
        if type(module) is nn.Conv2d:
            replacements[name] = BinaryConv2d.from_float(module, bin_)
        elif type(module) is nn.Linear:
            replacements[name] = BinaryLinear.from_float(module, bin_)
        else:
            skipped.append(f"{name} ({type(module).__name__})")
    if bin_.binarize_activations:
        for name, module in model.named_modules():
            if name and _is_activation(module):
                replacements[name] = SignActivation()
    if skipped:
        warnings.warn(
            f"binarize_model(): kept {len(skipped)} layer(s) float because they subclass nn.Conv2d/"
            f"nn.Linear with their own forward: {', '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )
    for name, new in replacements.items():
        _set_submodule(model, name, new)
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
