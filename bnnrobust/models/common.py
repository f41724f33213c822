"""Building blocks shared by the architectures: argument checks and a layer factory.

:class:`LayerFactory` decides, from one binarizer, which conv/linear/BatchNorm/activation a
model gets: float ``nn.Conv2d``/``nn.Linear``/``ReLU`` and affine BatchNorm for the float
reference (``binarizer="none"``); :class:`BinaryConv2d`/:class:`BinaryLinear` sharing the
binarizer and **affine=False BatchNorm** for every binarized model (the authors' BNN-WQ);
:class:`SignActivation` instead of ReLU/ReLU6 for ``hubara``. Two named options depart from
the authors' BNN-WQ on request: ``affine_bn=True`` (learned BatchNorm scale and shift) and
``float_bias=True`` (biases of binary layers stay float).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from bnnrobust.binarize import Binarizer, BinaryConv2d, BinaryLinear, SignActivation, make_binarizer
from bnnrobust.models.normalize import Normalize

__all__ = ["LayerFactory", "check_common_args", "make_input_normalize", "scale_channels"]


def scale_channels(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def check_common_args(model: str, num_classes: int, in_channels: int, width: float) -> None:
    """Raise ``ValueError`` naming the bad value of the arguments every model shares."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{model}: num_classes must be an integer >= 1, got {num_classes!r}.")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(
            f"{model}: in_channels must be an integer >= 1 (1 grey, 3 RGB), got {in_channels!r}."
        )
    if (
        isinstance(width, bool)
        or not isinstance(width, int | float)
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(
            f"{model}: width must be a finite number > 0 (1.0 = paper widths), got {width!r}."
        )


def make_input_normalize(
    model: str, in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> nn.Module:
    """A :class:`Normalize` for (mean, std) in [0, 1] pixel units, or ``nn.Identity`` if both None."""
    if mean is None and std is None:
        return nn.Identity()
    if mean is None or std is None:
        raise ValueError(
            f"{model}: give both mean and std or neither, got mean={mean!r}, std={std!r}."
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"{model}: mean and std need one value per input channel (in_channels={in_channels}), "
            f"got mean={list(mean)}, std={list(std)}."
        )
    return Normalize(mean, std)


class LayerFactory:
    """Makes the layers of one model from its binarizer.

    Args:
        binarizer: name, instance, class path or class_path dict (see ``make_binarizer``).
        keep_first_last: build the layers requested with ``first_or_last=True`` as float.
        affine_bn: BatchNorm with a learned scale and shift; None = the paper's choice
            (affine for the float reference, ``affine=False`` for a binarized model).
        float_bias: keep the biases of binary layers float (not binarized, not clipped).
    """

    def __init__(
        self,
        binarizer: str | Binarizer | dict | None,
        keep_first_last: bool = False,
        affine_bn: bool | None = None,
        float_bias: bool = False,
    ) -> None:
        self.binarizer = make_binarizer(binarizer)
        self.keep_first_last = bool(keep_first_last)
        self.affine_bn = (not self.binarizer.is_binary) if affine_bn is None else bool(affine_bn)
        self.float_bias = bool(float_bias)

    @property
    def binary(self) -> bool:
        return self.binarizer.is_binary

    def _float(self, first_or_last: bool) -> bool:
        return not self.binary or (first_or_last and self.keep_first_last)

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        first_or_last: bool = False,
    ) -> nn.Conv2d:
        """A 'same'-padded conv (padding = kernel_size // 2)."""
        padding = kernel_size // 2
        if self._float(first_or_last):
            return nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
            )
        return BinaryConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            groups=groups,
            bias=bias,
            binarizer=self.binarizer,
            binarize_bias=not self.float_bias,
        )

    def linear(
        self, in_features: int, out_features: int, bias: bool = True, first_or_last: bool = False
    ) -> nn.Linear:
        if self._float(first_or_last):
            return nn.Linear(in_features, out_features, bias=bias)
        return BinaryLinear(
            in_features, out_features, bias=bias, binarizer=self.binarizer,
            binarize_bias=not self.float_bias,
        )

    def bn2d(self, channels: int) -> nn.BatchNorm2d:
        """BatchNorm2d; ``affine=False`` when the model is binarized, unless ``affine_bn``."""
        return nn.BatchNorm2d(channels, affine=self.affine_bn)

    def bn1d(self, features: int) -> nn.BatchNorm1d:
        """BatchNorm1d; ``affine=False`` when the model is binarized, unless ``affine_bn``."""
        return nn.BatchNorm1d(features, affine=self.affine_bn)

    def act(self, kind: str = "relu") -> nn.Module:
        """``ReLU``/``ReLU6`` (``kind="relu6"``), or ``SignActivation`` for Hubara."""
        if self.binarizer.binarize_activations:
            return SignActivation()
        return nn.ReLU6(inplace=True) if kind == "relu6" else nn.ReLU(inplace=True)
