"""Data modules: CIFAR on tiny files in the on-disk format, real Fashion-MNIST, synthetic."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnrobust.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
    read_idx,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def write_cifar10(root: Path, per_batch: int = 12, n_test: int = 10) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 10) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": rng.integers(0, 100, n).tolist(),
                 "coarse_labels": rng.integers(0, 20, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


def test_cifar10_loads_tiny_files_with_seeded_split(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 10)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.dtype == torch.long and int(y.max()) < 10
    # pixels are the file's bytes / 255 in CHW order (no augmentation on validation)
    raw = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))
    first = torch.tensor(raw["data"][0], dtype=torch.float32).view(3, 32, 32) / 255
    assert torch.allclose(dm.test_set[0][0], first)
    # the split is seeded: same indices again, different with another seed
    again = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10, num_workers=0)
    again.setup("fit")
    other = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10, num_workers=0, seed=1)
    other.setup("fit")
    assert dm.val_set.indices == again.val_set.indices
    assert dm.val_set.indices != other.val_set.indices
    assert dm.num_classes == 10 and dm.in_channels == 3 and dm.dataset_name == "cifar10"


def test_cifar10_training_augmentation_crops_and_flips(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10, num_workers=0)
    dm.setup("fit")
    torch.manual_seed(0)
    views = torch.stack([dm.train_set[0][0] for _ in range(16)])
    assert views.shape == (16, 3, 32, 32)
    assert any(not torch.equal(views[0], v) for v in views[1:]), "augmentation never changed the image"
    plain = CIFAR10DataModule(data_dir=str(tmp_path), val_size=10, num_workers=0, augment=False)
    plain.setup("fit")
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])
    # every view is a crop (padding 4) of the original or of its mirror image
    original = plain.train_set[0][0]
    candidates = []
    for img in (original, original.flip(-1)):
        padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
        candidates += [padded[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    assert all(any(torch.equal(v, c) for c in candidates) for v in views)


def test_cifar100_loads_tiny_files(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), val_size=5, num_workers=0, test_subset=4)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (35, 5, 4)
    assert dm.num_classes == 100 and dm.dataset_name == "cifar100"


def test_offline_cifar_download_is_one_paragraph_naming_data_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # no network in tests: the download itself is what fails offline
    monkeypatch.setattr(torchvision.datasets.utils, "urlretrieve", offline, raising=False)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", lambda self: offline())
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "d"), num_workers=0, download=True)
    with pytest.raises(FileNotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert "cannot reach" in msg and "cifar-10-python.tar.gz" in msg
    assert repr(str(tmp_path / "d")) in msg and "cifar-10-batches-py" in msg


def test_missing_cifar_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="download true"):
        dm.setup()


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_loads_the_debian_files(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), batch_size=64)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (64, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    # the first test label of Fashion-MNIST is 9 (ankle boot), the second 2 (pullover)
    assert y[:2].tolist() == [9, 2]
    assert sorted(torch.unique(y).tolist()) == list(range(10)) or len(torch.unique(y)) > 5


def test_mnist_finds_files_in_data_dir_and_reads_gz_or_plain(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def write(name: str, arr: np.ndarray, gz: bool) -> None:
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        data = header + arr.astype(np.uint8).tobytes()
        if gz:
            with gzip.open(raw / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (raw / name).write_bytes(data)

    rng = np.random.default_rng(0)
    write("train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)), gz=True)
    write("train-labels-idx1-ubyte", rng.integers(0, 10, 30), gz=False)
    write("t10k-images-idx3-ubyte", rng.integers(0, 256, (7, 28, 28)), gz=False)
    write("t10k-labels-idx1-ubyte", rng.integers(0, 10, 7), gz=True)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=6)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 7)
    assert read_idx(raw / "t10k-images-idx3-ubyte").shape == (7, 28, 28)
    for bad in (0, 30):  # no validation sample, or no training sample left
        with pytest.raises(ValueError, match=rf"val_size must be between 1 and 29 .* got {bad}"):
            MNISTDataModule(data_dir=str(tmp_path), val_size=bad).setup()


def test_missing_mnist_error_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download true"):
        MNISTDataModule(data_dir=str(tmp_path)).setup()


def test_corrupt_idx_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))  # claims 9 bytes, has 2
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(bad)


def test_synthetic_module_is_learnable_and_deterministic() -> None:
    a = SyntheticDataModule(num_samples=64, num_classes=4, image_size=8, in_channels=3)
    b = SyntheticDataModule(num_samples=64, num_classes=4, image_size=8, in_channels=3)
    a.setup()
    b.setup()
    xa, ya = a.train_set.images, a.train_set.labels
    assert torch.equal(xa, b.train_set.images) and torch.equal(ya, b.train_set.labels)
    assert xa.shape == (64, 3, 8, 8) and 0 <= float(xa.min()) and float(xa.max()) <= 1
    # nearest class mean classifies the validation set far above chance (4 classes: 25 %)
    means = torch.stack([xa[ya == c].mean(0) for c in range(4)])
    xv, yv = a.val_set.images, a.val_set.labels
    pred = torch.cdist(xv.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == yv).float().mean() > 0.6


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"num_classes": 1}, "num_classes"),
    ({"noise": 2.0}, "noise"),
])
def test_bad_data_arguments_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticDataModule(**kwargs)


def test_test_subset_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_subset"):
        MNISTDataModule(data_dir=str(tmp_path), test_subset=0)
    with pytest.raises(ValueError, match="test_subset"):
        CIFAR10DataModule(data_dir=str(tmp_path), test_subset=-3)
