"""A synthetic, learnable image classification data module for tests and smoke runs."""

from __future__ import annotations

import torch

from bnnrobust.data.base import ImageDataModule, TensorImageDataset


def make_synthetic(
    num_samples: int, num_classes: int, in_channels: int, image_size: int, seed: int, noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1]: one fixed random prototype per class plus uniform noise."""
    g = torch.Generator().manual_seed(seed)
    shape = (in_channels, image_size, image_size)
    prototypes = torch.rand((num_classes, *shape), generator=g)
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    noise_t = (torch.rand((num_samples, *shape), generator=g) - 0.5) * 2 * noise
    images = (prototypes[labels] * (1 - noise) + 0.5 * noise + noise_t * 0.5).clamp(0, 1)
    return images, labels


class SyntheticDataModule(ImageDataModule):
    """Class prototypes plus noise: tiny, learnable in a few steps, nothing on disk.

    Args:
        num_samples: training samples (validation and test get ``num_samples // 4`` each).
        num_classes: number of classes.
        in_channels: image channels.
        image_size: height = width in pixels.
        noise: noise amplitude in [0, 1] pixel units (higher is harder).
        batch_size, num_workers, seed: see :class:`ImageDataModule`.
    """

    dataset_name = "synthetic"

    def __init__(
        self,
        num_samples: int = 256,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 16,
        noise: float = 0.5,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()
        for name, value, low in (("num_samples", num_samples, 4), ("num_classes", num_classes, 2),
                                 ("in_channels", in_channels, 1), ("image_size", image_size, 4)):
            if value < low:
                raise ValueError(f"SyntheticDataModule: {name} must be >= {low}, got {value!r}.")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"SyntheticDataModule: noise must be in [0, 1], got {noise!r}.")
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.noise = noise
        self.mean = (0.5,) * in_channels
        self.std = (0.25,) * in_channels

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        n_eval = max(self.num_samples // 4, 1)
        total = self.num_samples + 2 * n_eval
        x, y = make_synthetic(total, self.num_classes, self.in_channels, self.image_size,
                              self.seed, self.noise)
        a, b = self.num_samples, self.num_samples + n_eval
        self.train_set = TensorImageDataset(x[:a], y[:a])
        self.val_set = TensorImageDataset(x[a:b], y[a:b])
        self.test_set = TensorImageDataset(x[b:], y[b:])
