"""A small 4-layer ConvNet for 28x28 grey images (Fashion-MNIST/MNIST CPU configs)."""

from __future__ import annotations

from torch import nn

from bnnrobust.binarize import Binarizer
from bnnrobust.models.base import BaseNet
from bnnrobust.models.common import scale_channels
from bnnrobust.models.registry import register_model

__all__ = ["ConvNet"]


@register_model("convnet")
class ConvNet(BaseNet):
    """conv(32)-conv(32)-maxpool-conv(64)-conv(64)-maxpool-adaptive avgpool(4x4)-[fc]-linear.

    Each conv is 3x3 + BatchNorm + ReLU (sign for ``hubara``); channels scale with ``width``.
    With ``hidden > 0`` a hidden fully connected layer (``hidden`` units, BatchNorm1d and the
    same activation, binarized like the convs) sits before the classifier.

    Args:
        num_classes: number of logits d.
        in_channels: input channels (1 for Fashion-MNIST, 3 RGB).
        width: channel multiplier (> 0; 1.0 = 32-32-64-64).
        binarizer: ``none``, ``bc``, ``gd_tanh``, ``md_tanh_s``, ``hubara`` or a Binarizer.
        keep_first_last: keep the first conv and the linear head float.
        hidden: units of the hidden fully connected layer (0 = none).
        affine_bn: BatchNorm with learned scale and shift; None = paper default (affine for
            the float reference, ``affine=False`` for BNNs).
        float_bias: keep the biases of binary layers (the classifier's) float.
        mean: per-channel mean in [0, 1] pixel units (adds a Normalize first module).
        std: per-channel std in [0, 1] pixel units.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: float = 1.0,
        binarizer: str | Binarizer = "none",
        keep_first_last: bool = False,
        hidden: int = 0,
        affine_bn: bool | None = None,
        float_bias: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"ConvNet: hidden must be an integer >= 0 (0 = no hidden layer), "
                             f"got {hidden!r}.")
        f = self._setup(num_classes, in_channels, width, binarizer, keep_first_last, mean, std,
                        affine_bn=affine_bn, float_bias=float_bias)
        c1, c2 = scale_channels(32, width), scale_channels(64, width)
        self.features = nn.Sequential(
            f.conv(in_channels, c1, 3, first_or_last=True),
            f.bn2d(c1),
            f.act(),
            f.conv(c1, c1, 3),
            f.bn2d(c1),
            f.act(),
            nn.MaxPool2d(2),
            f.conv(c1, c2, 3),
            f.bn2d(c2),
            f.act(),
            f.conv(c2, c2, 3),
            f.bn2d(c2),
            f.act(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.hidden = hidden
        self.classifier: nn.Module = (
            nn.Sequential(
                f.linear(c2 * 16, hidden, bias=False), f.bn1d(hidden), f.act(),
                f.linear(hidden, num_classes, first_or_last=True),
            )
            if hidden
            else f.linear(c2 * 16, num_classes, first_or_last=True)
        )
