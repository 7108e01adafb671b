"""Datasets by name: the one place that knows every loader.

``load_dataset(name)`` returns a ``draco.tasks.torch.data.Dataset`` from

- ``synthetic``: generated in memory from a seed (``draco.tasks.torch.synthetic``);
- ``mnist``, ``fashion-mnist``: IDX files found on disk and verified (``draco.tasks.torch.data``);
- ``cifar10``: the python or binary version (``draco.tasks.torch.cifar``).

The loaders import ``draco.tasks.torch.data`` for the ``Dataset`` record; this module imports them,
so no loader module imports another (no import circle).
"""

from __future__ import annotations

import os

from draco.errors import ConfigError
from draco.tasks.torch import cifar
from draco.tasks.torch.data import IDX_DATASETS, Dataset, load_idx_dataset
from draco.tasks.torch.synthetic import synthetic_dataset

__all__ = ["DATASET_NAMES", "load_cifar10_dataset", "load_dataset"]

DATASET_NAMES = ("synthetic", *IDX_DATASETS, "cifar10")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    verify: bool = True,
) -> Dataset:
    """Any dataset by name. ``seed`` only matters for ``synthetic`` (its generator seed)."""
    if name == "synthetic":
        return synthetic_dataset(seed)
    if name in IDX_DATASETS:
        return load_idx_dataset(name, data_dir, verify=verify)
    if name == "cifar10":
        return load_cifar10_dataset(data_dir)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")


def load_cifar10_dataset(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """CIFAR-10 (python or binary version, ``draco.tasks.torch.cifar``) as a ``Dataset``."""
    train_x, train_y, test_x, test_y, folder = cifar.load_cifar10(data_dir)
    return Dataset(
        name=cifar.NAME,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        n_classes=cifar.N_CLASSES,
        mean=0.0,
        std=1.0,
        source=folder,
        image_shape=cifar.IMAGE_SHAPE,
        channel_mean=cifar.CHANNEL_MEAN,
        channel_std=cifar.CHANNEL_STD,
        augment=True,
    )
