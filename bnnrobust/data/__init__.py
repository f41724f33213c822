"""LightningDataModules: CIFAR-10/100, MNIST, Fashion-MNIST and a synthetic set for tests."""

from bnnrobust.data.base import ImageDataModule, TensorImageDataset
from bnnrobust.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from bnnrobust.data.mnist import FashionMNISTDataModule, MNISTDataModule, read_idx
from bnnrobust.data.synthetic import SyntheticDataModule, make_synthetic

__all__ = [
    "ImageDataModule",
    "TensorImageDataset",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "make_synthetic",
    "read_idx",
]
