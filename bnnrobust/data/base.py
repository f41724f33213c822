"""Shared base of bnnrobust's data modules: loaders, seeded splits, dataset facts.

Every data module yields images as float tensors in [0, 1] pixel units (normalization
lives inside the model) and integer labels, and exposes the facts the CLI links into the
model config: ``num_classes``, ``in_channels``, ``image_size``, ``mean``, ``std`` and
``dataset_name`` (used to pick attack presets).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class ImageDataModule(L.LightningDataModule):
    """Base class: subclasses fill ``self.train_set``, ``self.val_set``, ``self.test_set`` in ``setup``.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: data-loading worker processes (0 loads in the main process).
        seed: seed of the train/validation split (the split is the same on every rank and rerun).
        test_subset: keep only the first N test images (fast evaluation); None keeps all.
    """

    dataset_name: str = "unknown"
    num_classes: int = 0
    in_channels: int = 0
    image_size: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 test_subset: int | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}.")
        if test_subset is not None and test_subset < 1:
            raise ValueError(f"test_subset must be None or a positive integer, got {test_subset!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.test_subset = test_subset
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # -- splits ---------------------------------------------------------------------------
    def split_indices(self, n: int, val_size: int) -> tuple[list[int], list[int]]:
        """Seeded train/validation index split of ``n`` samples (same on every rank)."""
        if not 0 < val_size < n:
            raise ValueError(
                f"val_size must be between 1 and {n - 1} for a training set of {n} samples, "
                f"got {val_size!r}."
            )
        g = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=g).tolist()
        return perm[val_size:], perm[:val_size]

    # -- loaders --------------------------------------------------------------------------
    def _loader(self, dataset: Dataset | None, shuffle: bool, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}: no {stage} dataset; call setup() first "
                "(the Trainer does this for you)."
            )
        # training order: a permutation seeded per epoch (EpochShuffleSampler), so that a run
        # resumed at epoch k sees exactly the batches the uninterrupted run saw
        seed = torch.initial_seed()
        sampler = EpochShuffleSampler(len(dataset), seed) if shuffle else None  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # the loader's own generator: creating an iterator draws its worker base seed from
            # it, not from torch's global generator (whose state a resumed run restores)
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, "training")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, "test")


class EpochShuffleSampler(Sampler[int]):
    """A random order of ``n`` indices that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (as for a
    ``DistributedSampler``, which replaces this one under DDP), so the order of epoch k is the
    same whether or not the run was interrupted and resumed before it. ``seed`` defaults to
    ``torch.initial_seed()`` when the loader is built: ``seed_everything`` fixes it.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class TensorImageDataset(Dataset):
    """Images held in memory as uint8 (N, C, H, W) or float tensors; optional tensor transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[index]
        img = img.float().div(255.0) if img.dtype == torch.uint8 else img.float()
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index]


def subset(dataset: Dataset, indices: Sequence[int]) -> Subset:
    return Subset(dataset, list(indices))
