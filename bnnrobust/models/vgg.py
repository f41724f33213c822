"""CIFAR VGG-16 with a 512-512-512-d classifier."""

from __future__ import annotations

from torch import nn

from bnnrobust.binarize import Binarizer
from bnnrobust.models.base import BaseNet
from bnnrobust.models.common import scale_channels
from bnnrobust.models.registry import register_model

__all__ = ["VGG16"]

_CFG16: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]


@register_model("vgg16")
class VGG16(BaseNet):
    """VGG-16: 13 conv3x3-bn-act, 5 max-pools, global pool, linear-bn-act x2, linear to d.

    Max-pools use ``ceil_mode=True`` so that inputs down to 8 px work (a 1-px map stays 1 px).

    Args:
        num_classes: number of logits d.
        in_channels: input channels (1 or 3).
        width: channel multiplier (> 0; 1.0 = 64-512 and a 512-512 classifier).
        binarizer: ``none``, ``bc``, ``gd_tanh``, ``md_tanh_s``, ``hubara`` or a Binarizer.
        keep_first_last: keep the first conv and the last linear float.
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
        layers: list[nn.Module] = []
        cin = in_channels
        for item in _CFG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            cout = scale_channels(int(item), width)
            layers += [f.conv(cin, cout, 3, first_or_last=not layers), f.bn2d(cout), f.act()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        hidden = scale_channels(512, width)
        self.classifier = nn.Sequential(
            f.linear(cin, hidden),
            f.bn1d(hidden),
            f.act(),
            f.linear(hidden, hidden),
            f.bn1d(hidden),
            f.act(),
            f.linear(hidden, num_classes, first_or_last=True),
        )
