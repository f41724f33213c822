"""CIFAR-10 and CIFAR-100 data modules through torchvision.

Training images get random crop (padding 4) and horizontal flip; a seeded 45k/5k
train/validation split of the 50k training images is used, as the seed paper's authors
did. The files are torchvision's on-disk format (``cifar-10-batches-py`` /
``cifar-100-python`` under ``data_dir``); ``download=True`` fetches them (needs internet).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

from bnnrobust.data.base import ImageDataModule, TensorImageDataset, subset


def _present(cls: type) -> type:
    """A torchvision CIFAR class whose integrity check only requires the files to exist.

    torchvision verifies MD5 sums of the official archives, which would reject a partial or
    re-packed copy (and the tiny files the tests write); a missing file is still an error.
    """

    class Present(cls):  # type: ignore[misc, valid-type]
        meta: dict[str, str | None]  # torchvision's class attribute; _load_meta copies it

        def _check_integrity(self) -> bool:
            root = Path(self.root) / self.base_folder
            return all((root / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            meta = dict(self.meta)
            meta["md5"] = None  # check_integrity(path, None) only checks that the file exists
            self.meta = meta
            super()._load_meta()

    Present.__name__ = cls.__name__
    return Present


class _CIFARDataModule(ImageDataModule):
    torchvision_cls: type[torchvision.datasets.CIFAR10] = torchvision.datasets.CIFAR10
    in_channels = 3
    image_size = 32

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        augment: bool = True,
        test_subset: int | None = None,
        download: bool = False,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed,
                         test_subset=test_subset)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.val_size = val_size
        self.augment = augment
        self.download = download

    def _dataset(self, train: bool, download: bool = False):
        cls = _present(self.torchvision_cls)
        try:
            return cls(self.data_dir, train=train, download=download)
        except OSError as err:  # URLError, DNS and socket errors: no internet here
            folder = Path(self.data_dir) / self.torchvision_cls.base_folder
            raise FileNotFoundError(
                f"Downloading {self.torchvision_cls.__name__} failed ({type(err).__name__}: "
                f"{' '.join(str(err).split())}): this machine cannot reach "
                f"{self.torchvision_cls.url}. On a machine with internet access download "
                f"{self.torchvision_cls.filename} from that address, then either place the "
                f"archive in data_dir={self.data_dir!r} or unpack it so that {folder} holds "
                "its files, and run again with --data.init_args.download false."
            ) from None
        except RuntimeError as err:
            folder = Path(self.data_dir) / self.torchvision_cls.base_folder
            raise FileNotFoundError(
                f"{self.torchvision_cls.__name__} not found in {folder} ({err}). Download it with "
                f"--data.init_args.download true on a machine with internet access, or copy "
                f"torchvision's '{self.torchvision_cls.base_folder}' folder into "
                f"data_dir={self.data_dir!r}."
            ) from None

    def prepare_data(self) -> None:
        if self.download:
            self._dataset(True, download=True)
            self._dataset(False, download=True)

    @staticmethod
    def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,32,32
        return images, torch.as_tensor(ds.targets, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        train_x, train_y = self._tensors(self._dataset(True))
        test_x, test_y = self._tensors(self._dataset(False))
        train_idx, val_idx = self.split_indices(len(train_y), self.val_size)
        aug = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]) if self.augment else None
        self.train_set = subset(TensorImageDataset(train_x, train_y, transform=aug), train_idx)
        self.val_set = subset(TensorImageDataset(train_x, train_y), val_idx)
        n_test = self.test_subset or len(test_y)
        self.test_set = TensorImageDataset(test_x[:n_test], test_y[:n_test])


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 (10 classes, 32×32 RGB).

    Args:
        data_dir: folder holding ``cifar-10-batches-py`` (or where to download it).
        batch_size: samples per batch (per device under DDP).
        val_size: validation images held out of the 50k training images (paper: 5000).
        augment: random crop (padding 4) + horizontal flip on training images.
        test_subset: use only the first N test images; None = all.
        download: download with torchvision when missing (needs internet).
        num_workers: data-loading worker processes.
        seed: seed of the train/validation split.
    """

    dataset_name = "cifar10"
    torchvision_cls = torchvision.datasets.CIFAR10
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (100 classes, 32×32 RGB). Args as :class:`CIFAR10DataModule`."""

    dataset_name = "cifar100"
    torchvision_cls = torchvision.datasets.CIFAR100
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
