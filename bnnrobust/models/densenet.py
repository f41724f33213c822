"""CIFAR DenseNet-121 (growth 32, blocks [6, 12, 24, 16], compression 0.5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnrobust.binarize import Binarizer
from bnnrobust.models.base import BaseNet
from bnnrobust.models.common import LayerFactory, scale_channels
from bnnrobust.models.registry import register_model

__all__ = ["DenseNet121"]


class DenseLayer(nn.Module):
    """bn-act-conv1x1(4·growth)-bn-act-conv3x3(growth), output concatenated to the input."""

    def __init__(self, f: LayerFactory, cin: int, growth: int) -> None:
        super().__init__()
        inner = 4 * growth
        self.body = nn.Sequential(
            f.bn2d(cin),
            f.act(),
            f.conv(cin, inner, 1),
            f.bn2d(inner),
            f.act(),
            f.conv(inner, growth, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.body(x), x], dim=1)


class Transition(nn.Sequential):
    """bn-act-conv1x1(compression)-avgpool2."""

    def __init__(self, f: LayerFactory, cin: int, cout: int) -> None:
        super().__init__(f.bn2d(cin), f.act(), f.conv(cin, cout, 1), nn.AvgPool2d(2))


@register_model("densenet121")
class DenseNet121(BaseNet):
    """CIFAR DenseNet-121: 3x3 stem (2·growth channels), growth 32 (times ``width``).

    Args:
        num_classes: number of logits d.
        in_channels: input channels (1 or 3).
        width: multiplier of the growth rate (> 0; 1.0 = growth 32).
        binarizer: ``none``, ``bc``, ``gd_tanh``, ``md_tanh_s``, ``hubara`` or a Binarizer.
        keep_first_last: keep the stem conv and the last linear float.
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
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        f = self._setup(num_classes, in_channels, width, binarizer, keep_first_last, mean, std)
        growth = scale_channels(32, width)
        c = 2 * growth
        layers: list[nn.Module] = [f.conv(in_channels, c, 3, first_or_last=True)]
        blocks = (6, 12, 24, 16)
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(f, c, growth))
                c += growth
            if i < len(blocks) - 1:
                out = max(1, c // 2)
                layers.append(Transition(f, c, out))
                c = out
        layers += [f.bn2d(c), f.act()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = f.linear(c, num_classes, first_or_last=True)
