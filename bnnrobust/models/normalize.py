"""Input normalization inside the model, so that inputs (and attack eps) stay in [0, 1] pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize"]


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
