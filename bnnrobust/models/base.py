"""Base class of the zoo: normalize -> features -> global pool -> classifier."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bnnrobust.binarize import Binarizer
from bnnrobust.models.common import LayerFactory, check_common_args, make_input_normalize
from bnnrobust.models.normalize import migrate_wrapped_layout

__all__ = ["BaseNet"]


class BaseNet(nn.Module):
    """Shared plumbing: argument checks, ``normalize`` (first module), the layer factory.

    Subclasses call :meth:`_setup` first in ``__init__``, then set ``features`` (a module
    mapping (B, C, H, W) to feature maps) and ``classifier`` (pooled features -> logits).
    Inputs are images in [0, 1] pixel units; outputs are logits of shape (B, num_classes).
    """

    features: nn.Module
    pool: nn.Module
    classifier: nn.Module

    def _setup(
        self,
        num_classes: int,
        in_channels: int,
        width: float,
        binarizer: str | Binarizer,
        keep_first_last: bool,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        *,
        affine_bn: bool | None = None,
        float_bias: bool = False,
    ) -> LayerFactory:
        name = type(self).__name__
        check_common_args(name, num_classes, in_channels, width)
        self.normalize = make_input_normalize(name, in_channels, mean, std)
        # checkpoints of the older Sequential(Normalize, net) layout load into this one
        self.register_load_state_dict_pre_hook(migrate_wrapped_layout)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = float(width)
        factory = LayerFactory(binarizer, keep_first_last, affine_bn, float_bias)
        self.keep_first_last = bool(keep_first_last)
        return factory

    @property
    def binarizer(self) -> Binarizer | None:
        """The binarizer shared by the binary layers (None for a float model)."""
        from bnnrobust.binarize import binary_modules

        layers = binary_modules(self)
        return layers[0].binarizer if layers else None

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images (B, {self.in_channels}, H, W) in [0, 1], "
                f"got shape {tuple(x.shape)}."
            )
        x = self.features(self.normalize(x))
        return self.classifier(self.pool(x).flatten(1))
