"""Input normalization inside the model, so that inputs (and attack eps) stay in [0, 1] pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize", "upgrade_layout", "with_input_normalization"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``x`` in [0, 1] pixel units, shape (B, C, H, W).

    Args:
        mean: per-channel mean in [0, 1] pixel units (length C).
        std: per-channel standard deviation in [0, 1] pixel units (length C, all > 0).
    """

    # registered buffers, shape (1, C, 1, 1)
    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape or mean_t.numel() == 0:
            raise ValueError(
                f"Normalize needs mean and std of the same non-zero length (one value per "
                f"channel), got mean={list(mean)} and std={list(std)}."
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"Normalize needs every std > 0, got std={list(std)}.")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"Normalize expects input (B, {self.mean.shape[1]}, H, W), got shape {tuple(x.shape)}."
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _rounded(t: Tensor) -> list[float]:
    return [round(float(v), 6) for v in t.flatten()]


def with_input_normalization(model: nn.Module, mean: Sequence[float] | None,
                             std: Sequence[float] | None) -> nn.Module:
    """``model`` with ``Normalize(mean, std)`` in front: the one place normalization is added.

    A network of the zoo (:class:`~bnnrobust.models.base.BaseNet`) gets it in its own first
    module ``normalize`` (state-dict keys ``normalize.mean``/``normalize.std`` next to the
    network's), whether mean/std came with the network or from the data; any other module is
    wrapped as ``nn.Sequential(Normalize, model)`` (keys ``0.*`` and ``1.*``). Both None:
    ``model`` unchanged. A zoo network that already normalizes with other values is refused
    (the input would be normalized twice).
    """
    if (mean is None) != (std is None):
        raise ValueError(f"Give both mean and std or neither, got mean={mean!r}, std={std!r}.")
    if mean is None or std is None:  # both None (checked above)
        return model
    from bnnrobust.models.base import BaseNet
    from bnnrobust.models.common import make_input_normalize

    if not isinstance(model, BaseNet):
        return nn.Sequential(Normalize(mean, std), model)
    norm = make_input_normalize(type(model).__name__, model.in_channels, mean, std)
    have = model.normalize
    if isinstance(have, Normalize):
        assert isinstance(norm, Normalize)
        if not (torch.allclose(have.mean, norm.mean) and torch.allclose(have.std, norm.std)):
            raise ValueError(
                f"{type(model).__name__} already normalizes its input with mean="
                f"{_rounded(have.mean)}, std={_rounded(have.std)}, but "
                f"mean={list(mean)}, std={list(std)} were given too (e.g. linked from the data): "
                "the input would be normalized twice. Give mean/std in one place only.")
        return model
    model.normalize = norm
    return model


def migrate_wrapped_layout(module: nn.Module, state_dict: dict[str, Tensor], prefix: str,
                           *args: object) -> None:
    """Load-state-dict pre-hook of the zoo networks: weights saved in the older wrapped layout
    (``Sequential(Normalize, net)``: ``0.mean``, ``0.std``, ``1.<net keys>``) are renamed to
    the network's own (``normalize.mean``, ``normalize.std``, ``<net keys>``) in place."""
    wrapped = [k for k in state_dict if k.startswith(prefix + "1.")]
    if not wrapped or any(k.startswith(prefix + "normalize.") for k in state_dict) \
            or any(n == "1" for n, _ in module.named_children()):
        return
    for name in ("mean", "std"):
        old = f"{prefix}0.{name}"
        if old in state_dict:
            state_dict[f"{prefix}normalize.{name}"] = state_dict.pop(old)
    for key in wrapped:
        state_dict[prefix + key[len(prefix) + 2:]] = state_dict.pop(key)


def upgrade_layout(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` (a copy) with every zoo network inside ``model`` renamed from the older
    wrapped layout (see :func:`migrate_wrapped_layout`); for key checks before loading."""
    from bnnrobust.models.base import BaseNet

    upgraded = dict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, BaseNet):
            migrate_wrapped_layout(module, upgraded, f"{name}." if name else "")
    return upgraded
