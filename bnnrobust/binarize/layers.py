"""Binary layers: latent real weights, binarized on the fly by a shared :class:`Binarizer`.

``BinaryConv2d`` and ``BinaryLinear`` keep the latent weight in ``weight`` and the latent bias
in ``bias`` (both binarized, as the authors' BNN-WQ does for every weight and bias), so an
optimizer updates latents while the forward uses ``binarizer.quantize(latent, training)``.
``binarize_bias=False`` keeps the bias a float parameter (not binarized, not clipped).
``SignActivation`` is Hubara's sign activation with a selectable attack-time surrogate.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.binarize.binarizers import Binarizer, NoBinarizer
from bnnrobust.binarize.functions import TRAINING_SURROGATE, SignSurrogate, check_surrogate

__all__ = ["BinaryConv2d", "BinaryLinear", "SignActivation", "BinaryLayer"]


_PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


class _LatentLayer(Protocol):
    """What :class:`_BinaryMixin` needs from the layer it is mixed into (read-only, so that
    ``nn.Conv2d``'s ``bias: Tensor | None`` and ``nn.Linear``'s ``bias`` both match)."""

    @property
    def weight(self) -> Tensor: ...

    @property
    def bias(self) -> Tensor | None: ...

    @property
    def training(self) -> bool: ...

    @property
    def binarizer(self) -> Binarizer: ...

    @property
    def binarize_bias(self) -> bool: ...


class _BinaryMixin:
    """What BinaryConv2d and BinaryLinear share: a binarizer and the used weight/bias."""

    binarizer: Binarizer
    #: False keeps the bias float (used as is, never clipped); True binarizes it like the weight
    binarize_bias: bool

    def used_weight(self: _LatentLayer) -> Tensor:
        """The weight the forward uses now (±1 in eval for any binary binarizer)."""
        return self.binarizer.quantize(self.weight, self.training)

    def used_bias(self: _LatentLayer) -> Tensor | None:
        """The bias the forward uses now (binarized like the weight unless ``binarize_bias``
        is False), or None."""
        if self.bias is None or not self.binarize_bias:
            return self.bias
        return self.binarizer.quantize(self.bias, self.training)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight and bias are binarized by ``binarizer`` at every forward.

    Same arguments as :class:`torch.nn.Conv2d` plus ``binarizer`` (a shared
    :class:`Binarizer`, default :class:`NoBinarizer`) and ``binarize_bias`` (False: float bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: _PaddingMode = "zeros",
        binarizer: Binarizer | None = None,
        binarize_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.binarizer = binarizer if binarizer is not None else NoBinarizer()
        self.binarize_bias = bool(binarize_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.used_weight(), self.used_bias())

    @classmethod
    def from_float(cls, conv: nn.Conv2d, binarizer: Binarizer) -> BinaryConv2d:
        """A binary copy of ``conv`` (weights and bias copied as the latent values)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            # nn.Conv2d stores these as 2-tuples (typed tuple[int, ...] in torch)
            cast(tuple[int, int], conv.kernel_size),
            cast(tuple[int, int], conv.stride),
            cast(tuple[int, int] | str, conv.padding),
            cast(tuple[int, int], conv.dilation),
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            binarizer,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        _copy_params(conv, layer)
        return layer


class BinaryLinear(_BinaryMixin, nn.Linear):
    """``nn.Linear`` whose weight and bias are binarized by ``binarizer`` at every forward."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        binarizer: Binarizer | None = None,
        binarize_bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.binarizer = binarizer if binarizer is not None else NoBinarizer()
        self.binarize_bias = bool(binarize_bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.used_weight(), self.used_bias())

    @classmethod
    def from_float(cls, linear: nn.Linear, binarizer: Binarizer) -> BinaryLinear:
        """A binary copy of ``linear`` (weights and bias copied as the latent values)."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            binarizer,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        _copy_params(linear, layer)
        return layer


BinaryLayer = BinaryConv2d | BinaryLinear


@torch.no_grad()
def _copy_params(src: nn.Conv2d | nn.Linear, dst: BinaryConv2d | BinaryLinear) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        assert dst.bias is not None  # dst was built with bias=(src.bias is not None)
        dst.bias.copy_(src.bias)
    dst.weight.requires_grad_(src.weight.requires_grad)
    dst.train(src.training)


class SignActivation(nn.Module):
    """Sign activation ``sign(x)`` (sign(0) = +1) in training and eval (Hubara et al.).

    Backward: when ``attack_surrogate is None`` the training STE ``grad · 1[|x| <= 1]``;
    otherwise the surrogate named by ``attack_surrogate`` (one of
    :data:`bnnrobust.binarize.functions.SURROGATES`) with ``surrogate_kwargs`` (``slope`` for
    ``"tanh"``, ``beta`` for ``"swish_sign"``, default 5). Attack code sets both attributes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.attack_surrogate: str | None = None
        self.surrogate_kwargs: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        name = self.attack_surrogate
        param = check_surrogate(name, self.surrogate_kwargs)
        return SignSurrogate.apply(x, TRAINING_SURROGATE if name is None else name, param)

    def extra_repr(self) -> str:
        if self.attack_surrogate is None:
            return "surrogate=training STE (ste_clipped)"
        return (
            f"attack_surrogate={self.attack_surrogate!r}, surrogate_kwargs={self.surrogate_kwargs}"
        )
