"""CIFAR ResNets (3x3 stem, stride 1, no max-pool): ResNet-18 (BasicBlock) and ResNet-50 (Bottleneck)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnrobust.binarize import Binarizer
from bnnrobust.models.base import BaseNet
from bnnrobust.models.common import LayerFactory, scale_channels
from bnnrobust.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet18", "ResNet50"]


def _shortcut(f: LayerFactory, cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(f.conv(cin, cout, 1, stride), f.bn2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-bn-act-conv3x3-bn (+ shortcut) -act; expansion 1."""

    expansion = 1

    def __init__(self, f: LayerFactory, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1, self.act1 = f.conv(cin, planes, 3, stride), f.bn2d(planes), f.act()
        self.conv2, self.bn2 = f.conv(planes, cout, 3), f.bn2d(cout)
        self.shortcut = _shortcut(f, cin, cout, stride)
        self.act2 = f.act()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-bn-act-conv3x3(stride)-bn-act-conv1x1-bn (+ shortcut) -act; expansion 4."""

    expansion = 4

    def __init__(self, f: LayerFactory, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1, self.act1 = f.conv(cin, planes, 1), f.bn2d(planes), f.act()
        self.conv2, self.bn2, self.act2 = f.conv(planes, planes, 3, stride), f.bn2d(planes), f.act()
        self.conv3, self.bn3 = f.conv(planes, cout, 1), f.bn2d(cout)
        self.shortcut = _shortcut(f, cin, cout, stride)
        self.act3 = f.act()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


def _resnet_layers(
    f: LayerFactory,
    block: type[BasicBlock] | type[Bottleneck],
    blocks: list[int],
    in_channels: int,
    width: float,
) -> tuple[nn.Sequential, int]:
    stem = scale_channels(64, width)
    layers: list[nn.Module] = [
        f.conv(in_channels, stem, 3, first_or_last=True),
        f.bn2d(stem),
        f.act(),
    ]
    cin = stem
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
        p = scale_channels(planes, width)
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            layers.append(block(f, cin, p, stride))
            cin = p * block.expansion
    return nn.Sequential(*layers), cin


@register_model("resnet18")
class ResNet18(BaseNet):
    """CIFAR ResNet-18: BasicBlock [2, 2, 2, 2], widths 64-128-256-512 (times ``width``).

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
        self.features, cout = _resnet_layers(f, BasicBlock, [2, 2, 2, 2], in_channels, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = f.linear(cout, num_classes, first_or_last=True)


@register_model("resnet50")
class ResNet50(BaseNet):
    """CIFAR ResNet-50: Bottleneck [3, 4, 6, 3], widths 64-512 (x4 expansion, times ``width``).

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
        self.features, cout = _resnet_layers(f, Bottleneck, [3, 4, 6, 3], in_channels, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = f.linear(cout, num_classes, first_or_last=True)
