"""A small numpy task: linear least squares on seeded synthetic data (no files, no torch).

It keeps the network layer testable without torch and is a fine ``--model lstsq`` for
experiments on the round engine. Data: ``A`` (N x d) standard normal, ``y = A x* + 0.01 e``.
Partition loss: ``0.5 * mean_b (a_b . w - y_b)^2``; its gradient is ``A_b^T (A_b w - y_b) / B``.
Computed in float64 and rounded to float32, so every host gets bit-identical gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from draco.errors import ConfigError
from draco.tasks.sampler import PartitionSampler

N_SAMPLES = 4096
N_TEST = 1024


class LeastSquaresTask:
    """See module docstring. ``spec``: model="lstsq", dim, n_partitions, batch_size, seed."""

    def __init__(self, dim: int, n_partitions: int, batch_size: int, seed: int) -> None:
        if dim < 1:
            raise ConfigError(f"lstsq dim must be >= 1, got {dim}")
        self._dim = dim
        self._spec = {
            "model": "lstsq",
            "dim": dim,
            "n_partitions": n_partitions,
            "batch_size": batch_size,
            "seed": seed,
        }
        rng = np.random.default_rng([seed, 0x15])
        self.x_star = rng.standard_normal(dim)
        a = rng.standard_normal((N_SAMPLES + N_TEST, dim))
        y = a @ self.x_star + 0.01 * rng.standard_normal(N_SAMPLES + N_TEST)
        self.a_train, self.y_train = a[:N_SAMPLES], y[:N_SAMPLES]
        self.a_test, self.y_test = a[N_SAMPLES:], y[N_SAMPLES:]
        self.sampler = PartitionSampler(N_SAMPLES, n_partitions, batch_size, seed)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LeastSquaresTask:
        try:
            return cls(
                int(spec["dim"]),
                int(spec["n_partitions"]),
                int(spec["batch_size"]),
                int(spec["seed"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad lstsq task spec {spec!r}: {exc}") from exc

    @property
    def dim(self) -> int:
        return self._dim

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def initial_params(self) -> np.ndarray:
        return np.zeros(self._dim, dtype=np.float32)

    def partition_gradients(
        self,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        *,
        flip_labels: bool = False,
    ) -> np.ndarray:
        # flip_labels has no meaning for regression: the label_flip attack negates targets.
        w = np.asarray(params, dtype=np.float64)
        out = np.empty((len(partitions), self._dim), dtype=np.float32)
        for row, k in enumerate(partitions):
            idx = self.sampler.indices(round_index, k)
            a, y = self.a_train[idx], self.y_train[idx]
            if flip_labels:
                y = -y
            out[row] = a.T @ (a @ w - y) / len(idx)
        return out

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        w = np.asarray(params, dtype=np.float64)
        resid = self.a_test @ w - self.y_test
        return {
            "test_loss": float(0.5 * np.mean(resid**2)),
            "param_error": float(np.linalg.norm(w - self.x_star) / np.linalg.norm(self.x_star)),
        }
