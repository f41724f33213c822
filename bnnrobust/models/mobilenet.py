"""CIFAR MobileNet-V2 (stride-1 stem and second stage, as in the usual CIFAR port)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnrobust.binarize import Binarizer
from bnnrobust.models.base import BaseNet
from bnnrobust.models.common import LayerFactory, scale_channels
from bnnrobust.models.registry import register_model

__all__ = ["MobileNetV2"]

# (expansion, out channels, blocks, stride); CIFAR: stride 1 in the stem and in stage 2.
_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """conv1x1 expand-bn-act, depthwise conv3x3(stride)-bn-act, conv1x1 project-bn (+ identity)."""

    def __init__(self, f: LayerFactory, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [f.conv(cin, hidden, 1), f.bn2d(hidden), f.act("relu6")]
        layers += [
            f.conv(hidden, hidden, 3, stride, groups=hidden),
            f.bn2d(hidden),
            f.act("relu6"),
            f.conv(hidden, cout, 1),
            f.bn2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        return x + out if self.residual else out


@register_model("mobilenet_v2")
class MobileNetV2(BaseNet):
    """CIFAR MobileNet-V2: 3x3 stem (32), inverted residuals, conv1x1 to 1280, linear to d.

    Args:
        num_classes: number of logits d.
        in_channels: input channels (1 or 3).
        width: channel multiplier (> 0).
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
        c = scale_channels(32, width)
        layers: list[nn.Module] = [
            f.conv(in_channels, c, 3, first_or_last=True),
            f.bn2d(c),
            f.act("relu6"),
        ]
        for expansion, out, n, stride in _CFG:
            cout = scale_channels(out, width)
            for i in range(n):
                layers.append(InvertedResidual(f, c, cout, stride if i == 0 else 1, expansion))
                c = cout
        last = scale_channels(1280, width)
        layers += [f.conv(c, last, 1), f.bn2d(last), f.act("relu6")]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = f.linear(last, num_classes, first_or_last=True)
