"""Deterministic partition sampler: which samples partition k uses in round t.

Every worker that holds partition k must compute a bit-identical gradient, so the sample
indices are a pure function of ``(seed, round, partition)`` (and the fixed sizes), never of
worker state. Epoch-based shuffling, exactly like plain minibatch SGD with a global batch of
``n_partitions * batch_size``:

1. Epoch e has the permutation ``perm_e = default_rng([seed, e]).permutation(n_samples)``.
2. The epochs are concatenated into one endless stream of sample indices.
3. Round t consumes the slots ``[t*P*B, (t+1)*P*B)`` of that stream (P partitions, B samples
   each); partition k takes the B slots starting at ``t*P*B + k*B``.

A round may straddle two epochs; that is handled in step 3 by reading across the boundary.

Data augmentation (CIFAR-10's random crop and flip) draws from its own stream,
``default_rng([seed, AUGMENT_STREAM, round, partition])`` (``augmentation``), so it too is a
pure function of (seed, round, partition): every replica of a partition augments alike.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from draco.errors import ConfigError

AUGMENT_STREAM = 0xA06  # separates the augmentation draws from the epoch permutations


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n_samples: int) -> np.ndarray:
    # Cached: consecutive rounds mostly fall into the same epoch.
    perm = np.random.default_rng([seed, epoch]).permutation(n_samples)
    perm.setflags(write=False)
    return perm


class PartitionSampler:
    """Sample indices for (round, partition), identical on every host.

    Parameters
    ----------
    n_samples : int
        Size of the training set.
    n_partitions : int
        Partitions per round (P).
    batch_size : int
        Samples per partition per round (B).
    seed : int
        Shuffling seed, shared by the whole run.
    """

    def __init__(self, n_samples: int, n_partitions: int, batch_size: int, seed: int) -> None:
        if n_samples < 1 or n_partitions < 1 or batch_size < 1:
            raise ConfigError(
                f"sampler needs positive sizes, got n_samples={n_samples}, "
                f"n_partitions={n_partitions}, batch_size={batch_size}"
            )
        if batch_size > n_samples:
            raise ConfigError(f"batch size {batch_size} exceeds the {n_samples} training samples")
        self.n_samples = n_samples
        self.n_partitions = n_partitions
        self.batch_size = batch_size
        self.seed = seed

    def indices(self, round_index: int, partition: int) -> np.ndarray:
        """Sample indices of ``partition`` in round ``round_index``: shape (batch_size,), int64."""
        if round_index < 0 or not 0 <= partition < self.n_partitions:
            raise ValueError(f"bad round {round_index} or partition {partition}")
        n = self.n_samples
        start = (round_index * self.n_partitions + partition) * self.batch_size
        out = np.empty(self.batch_size, dtype=np.int64)
        filled = 0
        while filled < self.batch_size:
            epoch, offset = divmod(start + filled, n)
            take = min(self.batch_size - filled, n - offset)
            out[filled : filled + take] = _epoch_permutation(self.seed, epoch, n)[
                offset : offset + take
            ]
            filled += take
        return out

    def augmentation(
        self, round_index: int, partition: int, n_offsets: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crop offsets and flips for the batch of ``partition`` in round ``round_index``.

        Returns
        -------
        dy, dx : np.ndarray
            int64, (batch_size,): crop offsets in [0, n_offsets) (rows, columns).
        flip : np.ndarray
            bool, (batch_size,): mirror the image left-right, probability 1/2.
        """
        if round_index < 0 or not 0 <= partition < self.n_partitions or n_offsets < 1:
            raise ValueError(f"bad round {round_index}, partition {partition} or {n_offsets}")
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, round_index, partition])
        offsets = rng.integers(0, n_offsets, size=(2, self.batch_size), dtype=np.int64)
        flip = rng.integers(0, 2, size=self.batch_size, dtype=np.int64).astype(bool)
        return offsets[0], offsets[1], flip

    def epoch_of(self, round_index: int) -> float:
        """Fractional epoch reached at the start of ``round_index``."""
        return round_index * self.n_partitions * self.batch_size / self.n_samples
