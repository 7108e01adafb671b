"""DRACO's repetition code: groups of >= 2s+1 workers computing the same partitions.

The n workers form G = n // (2s+1) groups of consecutive ids, sizes differing by at most one
(each >= 2s+1; no divisibility needed). A group of m workers holds the m partitions with its
members' ids; every member sends the float32 sum of those m partition gradients, summed in
partition order so honest members agree bit for bit. Decoding: a majority vote per group
(``draco.core.vote.decode_repetition``). Built by name with ``draco.core.codes.make_code``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from draco.core.decoder_types import DecodeResult, check_counts, check_grads, check_worker
from draco.core.vote import decode_repetition, repetition_ready
from draco.errors import ConfigError

__all__ = ["RepetitionCode"]


class RepetitionCode:
    """DRACO's repetition code [CWCP18, section 4.1] without the divisibility condition.

    Parameters
    ----------
    n_workers : int
        n >= 2s+1.
    n_adversaries : int
        s >= 0.
    rtol : float or None
        None (default): exact, bitwise majority vote. A float in (0, 1): tolerance vote for
        heterogeneous hosts (two payloads count as equal when
        max|a - b| <= rtol * max(||a||_inf, ||b||_inf); the value with >= s+1 such copies wins).

    Attributes
    ----------
    groups : tuple of tuple of int
        Member ids of each group (consecutive ids; group sizes differ by at most one).
    redundancy : int
        The smallest group size (every partition is computed by at least this many workers).
    """

    name = "repetition"
    payload_dtype = np.dtype(np.float32)

    def __init__(self, n_workers: int, n_adversaries: int, rtol: float | None = None) -> None:
        n, s = check_counts(self.name, n_workers, n_adversaries)
        if rtol is not None:
            if isinstance(rtol, bool) or not isinstance(rtol, (int, float)):
                raise ConfigError(f"repetition option rtol must be a number, got {rtol!r}")
            if not 0.0 < float(rtol) < 1.0:
                raise ConfigError(f"repetition option rtol must be in (0, 1), got {rtol}")
            rtol = float(rtol)
        self.n_workers, self.n_adversaries, self.n_partitions = n, s, n
        self.rtol = rtol
        self.options: dict[str, Any] = {"rtol": rtol}
        n_groups = n // (2 * s + 1)
        base, extra = divmod(n, n_groups)
        groups: list[tuple[int, ...]] = []
        start = 0
        for g in range(n_groups):
            size = base + (1 if g < extra else 0)
            groups.append(tuple(range(start, start + size)))
            start += size
        self.groups: tuple[tuple[int, ...], ...] = tuple(groups)
        self.redundancy = min(len(g) for g in groups)
        self._group_of = {j: g for g in self.groups for j in g}
        self.assignment = np.zeros((n, n), dtype=bool)
        for members in self.groups:
            idx = np.array(members)
            self.assignment[np.ix_(idx, idx)] = True

    def __repr__(self) -> str:
        return (
            f"RepetitionCode(n_workers={self.n_workers}, "
            f"n_adversaries={self.n_adversaries}, rtol={self.rtol})"
        )

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        """The partitions of ``worker``'s group: its members' ids, ascending."""
        check_worker(self, worker)
        return self._group_of[int(worker)]

    def encode(self, worker: int, grads: np.ndarray) -> np.ndarray:
        """The group sum g_a + g_{a+1} + ... accumulated in float32 in that fixed order.

        Parameters
        ----------
        worker : int
        grads : ndarray, shape (m, d), float32, rows in ``partitions_of(worker)`` order

        Returns
        -------
        ndarray, shape (d,), float32
        """
        grads = check_grads(self, worker, grads)
        out = np.array(grads[0], dtype=np.float32, copy=True)
        for row in grads[1:]:
            out += row.astype(np.float32, copy=False)
        return out

    def ready(self, received: Mapping[int, np.ndarray]) -> bool:
        """True once every group has a value backed by >= s+1 identical copies.

        Such a value is certainly honest, so decoding now gives the exact sum whatever the
        missing workers would send. Cost: byte comparisons only (no float arithmetic).
        """
        return repetition_ready(self.groups, received, self.n_adversaries, self.rtol)

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> DecodeResult:
        """Majority vote per group; see ``draco.core.vote.decode_repetition``.

        ``rng`` is unused (the vote is deterministic); it is accepted for the common interface.
        """
        return decode_repetition(self.groups, received, self.n_adversaries, self.rtol)
