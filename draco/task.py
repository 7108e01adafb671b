"""What the round engine trains: the ``Task`` contract, the registry and the task flags.

The parameter server and the workers are task-agnostic. The server builds a task from the
command line, sends its ``spec()`` to every worker in the welcome message, and each worker
rebuilds the identical task with ``make_task(spec)``. Workers call
``partition_gradients``; the server calls ``initial_params`` and ``evaluate`` and applies the
optimizer (``draco.optim``) to the decoded gradient itself.

Tasks: ``lstsq`` (numpy least squares, no files, no torch: ``draco.lstsq``) and the torch
models ``fc``, ``lenet``, ``logreg``, ``lenet_bn``, ``resnet18`` (``draco.train.task``,
imported only when asked for, so the network layer never imports torch).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from draco.errors import ConfigError

TORCH_MODELS = ("fc", "lenet", "logreg", "lenet_bn", "resnet18")
MODELS = ("lstsq", *TORCH_MODELS)
DATASETS = ("synthetic", "mnist", "fashion-mnist", "cifar10")


@runtime_checkable
class Task(Protocol):
    """One learning problem as both sides of a run see it. Parameters are float32, shape (dim,)."""

    @property
    def dim(self) -> int:
        """Number of float32 parameters."""
        ...

    def spec(self) -> dict[str, Any]:
        """msgpack/JSON-able description; ``make_task(spec)`` rebuilds an identical task."""
        ...

    def initial_params(self) -> np.ndarray:
        """Deterministic initial parameters from the spec's seed: shape (dim,), float32."""
        ...

    def partition_gradients(
        self,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        *,
        flip_labels: bool = False,
    ) -> np.ndarray:
        """Gradient of each partition's mean loss: shape (len(partitions), dim), float32.

        Bit-identical on every host for the same arguments. ``flip_labels`` trains on the
        labels y -> C-1-y (the ``label_flip`` attack; classification tasks only).
        """
        ...

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        """Test metrics, e.g. ``{"test_accuracy": 0.97, "test_loss": 0.1}`` (may be empty)."""
        ...


def make_task(spec: dict[str, Any]) -> Task:
    """Build the task a spec describes. Raises ``ConfigError`` for an unknown or bad spec."""
    if not isinstance(spec, dict) or "model" not in spec:
        raise ConfigError(f"a task spec is a dict with a 'model' key, got {spec!r}")
    model = spec["model"]
    if model == "lstsq":
        from draco.lstsq import LeastSquaresTask

        return LeastSquaresTask.from_spec(spec)
    if model in TORCH_MODELS:
        from draco.train.task import TorchTask

        return TorchTask.from_spec(spec)
    raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """The task's own flags, shared by ``draco-ps`` and ``draco-run``."""
    g = parser.add_argument_group("task")
    g.add_argument(
        "--model",
        choices=MODELS,
        default="fc",
        help="what to train (fc = the paper's 784-800-500-10 network; resnet18 = the CIFAR "
        "ResNet-18, with --dataset cifar10; lstsq needs no torch)",
    )
    g.add_argument(
        "--dataset",
        choices=DATASETS,
        default="synthetic",
        help="training data for the torch models (synthetic needs no files)",
    )
    g.add_argument(
        "--data-dir",
        default=None,
        help="folder with the IDX / CIFAR-10 files (else $DRACO_DATA, then standard places)",
    )
    g.add_argument("--batch-size", type=int, default=32, help="samples per partition per round")
    g.add_argument("--lr", type=float, default=0.01, help="learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    g.add_argument(
        "--eval-every",
        type=int,
        default=10,
        help="evaluate on the test split every K rounds; 0 = only at the end",
    )
    g.add_argument("--lstsq-dim", type=int, default=64, help="parameters of the lstsq task")


def task_spec_from_args(args: argparse.Namespace, n_partitions: int, seed: int) -> dict[str, Any]:
    """The spec ``make_task`` takes, from parsed task flags. Validates sizes."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.eval_every < 0:
        raise ConfigError(f"--eval-every must be >= 0, got {args.eval_every}")
    spec: dict[str, Any] = {
        "model": args.model,
        "n_partitions": int(n_partitions),
        "batch_size": int(args.batch_size),
        "seed": int(seed),
    }
    if args.model == "lstsq":
        if args.lstsq_dim < 1:
            raise ConfigError(f"--lstsq-dim must be >= 1, got {args.lstsq_dim}")
        spec["dim"] = int(args.lstsq_dim)
    else:
        spec["dataset"] = args.dataset
        spec["data_dir"] = args.data_dir
    return spec
