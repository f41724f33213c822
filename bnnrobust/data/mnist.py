"""MNIST and Fashion-MNIST data modules (28×28 grey images, 10 classes).

Files are looked up, in order, in ``data_dir/<Name>/raw``, ``data_dir/<name>``, ``data_dir``
and the Debian package's folder (``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST,
installed by ``apt-get install dataset-fashion-mnist``). Both the ``.gz`` files and unzipped
IDX files are accepted. With ``download=True`` and none found, torchvision downloads them
into ``data_dir`` (needs internet).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from bnnrobust.data.base import ImageDataModule, TensorImageDataset, subset

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (corrupt or wrong file).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {dims}, "
                         f"found {len(data) - offset} (truncated or corrupt file).")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


class _IdxDataModule(ImageDataModule):
    """Common code of MNIST and Fashion-MNIST."""

    torchvision_name: str = ""
    debian_dir: str | None = None
    debian_hint: str = ""
    num_classes = 10
    in_channels = 1
    image_size = 28

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        train_subset: int | None = None,
        test_subset: int | None = None,
        download: bool = False,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed,
                         test_subset=test_subset)
        if train_subset is not None and train_subset < 1:
            raise ValueError(f"train_subset must be None or a positive integer, got {train_subset!r}.")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.val_size = val_size
        self.train_subset = train_subset
        self.download = download

    def candidate_dirs(self) -> list[Path]:
        root = Path(self.data_dir).expanduser()
        dirs = [root / self.torchvision_name / "raw", root / self.dataset_name,
                root / self.torchvision_name, root]
        if self.debian_dir is not None:
            dirs.append(Path(self.debian_dir))
        return dirs

    def locate(self) -> Path:
        """The folder holding all four IDX files, or a clear error saying how to get them."""
        for folder in self.candidate_dirs():
            if all(_find(folder, stem) for stem in _FILES.values()):
                return folder
        searched = ", ".join(str(d) for d in self.candidate_dirs())
        raise FileNotFoundError(
            f"{self.torchvision_name} not found (looked in: {searched}). Get it with "
            f"{self.debian_hint}or rerun with --data.init_args.download true on a machine with "
            f"internet access (files go to data_dir={self.data_dir!r})."
        )

    def prepare_data(self) -> None:
        try:
            self.locate()
        except FileNotFoundError:
            if not self.download:
                raise
            import torchvision

            getattr(torchvision.datasets, self.torchvision_name)(self.data_dir, train=True, download=True)
            getattr(torchvision.datasets, self.torchvision_name)(self.data_dir, train=False, download=True)

    def load_arrays(self) -> dict[str, torch.Tensor]:
        folder = self.locate()
        out = {}
        for key, stem in _FILES.items():
            arr = read_idx(_find(folder, stem))  # type: ignore[arg-type]
            t = torch.from_numpy(arr.copy())
            out[key] = t.unsqueeze(1) if key.endswith("images") else t.long()
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        arrays = self.load_arrays()
        full_train = TensorImageDataset(arrays["train_images"], arrays["train_labels"])
        train_idx, val_idx = self.split_indices(len(full_train), self.val_size)
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        self.train_set = subset(full_train, train_idx)
        self.val_set = subset(full_train, val_idx)
        n_test = self.test_subset or len(arrays["test_labels"])
        self.test_set = TensorImageDataset(arrays["test_images"][:n_test], arrays["test_labels"][:n_test])


class FashionMNISTDataModule(_IdxDataModule):
    """Fashion-MNIST: 60k training images (split 55k/5k train/val, seeded) and 10k test images.

    Args:
        data_dir: folder searched first for the IDX files (see module docstring).
        batch_size: samples per batch (per device under DDP).
        val_size: validation images held out of the 60k training images.
        train_subset: use only the first N training images of the (seeded) split; None = all.
        test_subset: use only the first N test images (fast evaluation); None = all 10k.
        download: download with torchvision if the files are not found (needs internet).
        num_workers: data-loading worker processes.
        seed: seed of the train/validation split.
    """

    dataset_name = "fmnist"
    torchvision_name = "FashionMNIST"
    debian_dir = "/usr/share/datasets/fashion-mnist"
    debian_hint = "`sudo apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, offline-friendly), "
    mean = (0.2860,)
    std = (0.3530,)


class MNISTDataModule(_IdxDataModule):
    """MNIST: 60k training images (split 55k/5k, seeded) and 10k test images. Args as Fashion-MNIST."""

    dataset_name = "mnist"
    torchvision_name = "MNIST"
    debian_dir = None
    debian_hint = ""
    mean = (0.1307,)
    std = (0.3081,)
