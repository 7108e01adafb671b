"""A complete DRACO plug-in task: a small CNN on generated images of four shapes.

Nothing to download: the data set is drawn here from a fixed seed, so every host builds the
same images. Run it on this machine (from the repository root)::

    PYTHONPATH=examples/custom_task draco-run --task shapes_cnn:make_task \\
        --task-option width=8 --workers 7 --adversaries 1 --attack constant --rounds 60

or across hosts: the PS names the factory, and each worker's operator allows it (the module
must be importable on every host, here through PYTHONPATH)::

    draco-ps --task shapes_cnn:make_task --task-file examples/custom_task/shapes.toml ...
    draco-worker --ps HOST:7000 --id 0 --count 7 --token-file tokens \\
        --allow-task shapes_cnn:make_task

The contract is in docs/tasks.md: a factory ``f(ctx: TaskContext, **options) -> Task``;
``ModuleTask`` builds the Task from an ``nn.Module`` factory and a data factory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from draco.tasks.contract import TaskContext
from draco.tasks.torch.module_task import ModuleTask

SIDE = 12  # images are SIDE x SIDE, one channel
SHAPES = ("horizontal bar", "vertical bar", "square", "cross")


def draw_shapes(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, 1, SIDE, SIDE) float32 in about [-1, 2] and labels (n,) int64."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SHAPES), n)
    images = np.zeros((n, 1, SIDE, SIDE), dtype=np.float32)
    for i, label in enumerate(labels):
        r, c = rng.integers(2, SIDE - 2, 2)  # the shape's centre
        img = images[i, 0]
        if label == 0:
            img[r, max(0, c - 3) : c + 3] = 1.0
        elif label == 1:
            img[max(0, r - 3) : r + 3, c] = 1.0
        elif label == 2:
            img[r - 2 : r + 2, c - 2 : c + 2] = 1.0
            img[r - 1 : r + 1, c - 1 : c + 1] = 0.0
        else:
            img[r, max(0, c - 2) : c + 3] = 1.0
            img[max(0, r - 2) : r + 3, c] = 1.0
    images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return images, labels.astype(np.int64)


class Shapes(Dataset):
    """Map-style data set of ``(image (1, SIDE, SIDE) float32, label int64)``.

    ``augment`` shifts each image by a random pixel: the draw uses torch's global RNG,
    which ModuleTask seeds per (seed, round, partition), so every replica of a partition
    sees the same shifts.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: bool) -> None:
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.augment:
            dy, dx = (int(v) for v in torch.randint(-1, 2, (2,)))
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, self.labels[i]


class SmallCNN(nn.Module):
    """conv3x3(1->w) ReLU maxpool2, conv3x3(w->2w) ReLU maxpool2, linear(2w*3*3 -> 4)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)  # 12x12 -> 12x12, pool -> 6x6
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)  # 6x6, pool -> 3x3
        self.head = nn.Linear(2 * width * 3 * 3, len(SHAPES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def make_task(
    ctx: TaskContext,
    width: int = 8,
    n_train: int = 2048,
    n_test: int = 512,
    noise: float = 0.3,
    augment: bool = True,
    data_seed: int = 0,
) -> ModuleTask:
    """The factory ``draco-ps --task shapes_cnn:make_task`` names.

    The options arrive from the parameter server; on a worker they are untrusted input, so
    they are bounded here before anything is allocated.
    """
    if not 1 <= width <= 64:
        raise ValueError(f"width must be in [1, 64], got {width}")
    if not (1 <= n_train <= 100_000 and 1 <= n_test <= 100_000):
        raise ValueError("n_train and n_test must be in [1, 100000]")

    def data() -> tuple[Shapes, tuple[np.ndarray, np.ndarray]]:
        # Train and test from separate streams of the same data seed.
        train = draw_shapes(n_train, data_seed * 2, noise)
        test = draw_shapes(n_test, data_seed * 2 + 1, noise)
        return Shapes(*train, augment=augment), test

    return ModuleTask(ctx, model=lambda: SmallCNN(width), data=data)
