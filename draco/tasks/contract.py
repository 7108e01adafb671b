"""The task contract: what the parameter server and the workers need of a learning problem.

The parameter server and the workers are task-agnostic: the server builds a task
(``draco.tasks.registry.make_task``), sends its ``spec()`` to every worker in the welcome
message, and each worker rebuilds the identical task from it. Workers call
``partition_gradients``; the server calls ``initial_params`` and ``evaluate`` and applies the
optimizer (``draco.ps.optim``) to the decoded gradient itself. Plug-in factories receive a
``TaskContext`` (docs/tasks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["CUSTOM_MODEL", "DEVICES", "Task", "TaskContext", "check_params"]

#: The ``model`` of a plug-in task's spec; the factory is in ``spec["factory"]``.
CUSTOM_MODEL = "custom"
#: Devices a worker may compute on (``draco-worker --device``).
DEVICES = ("cpu", "cuda", "mps")


def check_params(params: np.ndarray, dim: int) -> np.ndarray:
    """``params`` as an array of shape (dim,); ValueError naming both shapes otherwise."""
    w = np.asarray(params)
    if w.shape != (dim,):
        raise ValueError(f"expected parameters of shape ({dim},), got {w.shape}")
    return w


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


@dataclass(frozen=True)
class TaskContext:
    """What a task factory is given besides its own options.

    Attributes
    ----------
    n_partitions : int
        Gradient partitions per round (P); ``partition_gradients`` gets ids in [0, P).
    batch_size : int
        Samples per partition per round (B), from ``draco-ps --batch-size``.
    seed : int
        The run's seed: initial parameters, data order and any randomness of the task.
    device : str
        ``cpu``, ``cuda`` or ``mps``: where this process computes (the worker's own
        ``--device``; the parameter server always builds its task on ``cpu``).
    data_dir : str or None
        ``draco-ps --data-dir`` (a hint; the factory decides what it means).
    spec : dict
        The whole spec; a task's ``spec()`` returns it unchanged.
    """

    n_partitions: int
    batch_size: int
    seed: int
    device: str = "cpu"
    data_dir: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
