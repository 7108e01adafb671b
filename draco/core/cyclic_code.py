"""DRACO's cyclic (DFT) code: worker j computes partitions j..j+2s and sends one complex
vector.

Worker j sends y_j = sum_k A[j, k] g_k. Row j of A is the value at the DFT node x_j of the
polynomials p_k (degree < n-2s, p_k(0) = 1, p_k vanishing at every node outside partition
k's window), so every column of Y = A G is a Reed-Solomon codeword over the n-th roots of
unity whose constant coefficient is the wanted sum [CWCP18, section 5]. The nodes, the
stride and the row of A: ``draco.core.cyclic_construction``. Decoding:
``draco.core.cyclic_decoder.decode_cyclic``. Built by name with
``draco.core.codes.make_code``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from draco.core import cyclic_construction as construction
from draco.core.blas_threads import single_blas_thread
from draco.core.cyclic_decoder import decode_cyclic
from draco.core.decoder_types import (
    CyclicDecoderConfig,
    DecodeResult,
    all_finite,
    check_counts,
    check_grads,
    check_worker,
)
from draco.core.locator import locate_cyclic
from draco.core.projection import project_rows
from draco.errors import ConfigError, DecodeError

__all__ = ["CyclicCode"]


class CyclicCode:
    """DRACO's cyclic (DFT) code [CWCP18, section 5] on a stride-permuted DFT circle.

    Parameters
    ----------
    n_workers : int
        n >= 2s+1 (= the number of partitions).
    n_adversaries : int
        s >= 0.
    stride : int or None
        The node map j -> x_j = exp(-2 pi i a j / n); None picks ``best_stride(n, s)``.
        Must be coprime to n.
    payload_dtype : {"auto", "complex64", "complex128"}
        "auto" (default): complex64 when ``gap_amplification`` <= COMPLEX64_MAX_AMPLIFICATION
        and, with 2s workers out, <= COMPLEX64_MAX_ERASURE_AMPLIFICATION and
        ``locator_condition`` <= COMPLEX64_MAX_LOCATOR_CONDITION and ``pgz_condition``
        <= COMPLEX64_MAX_PGZ_CONDITION, else complex128 (the code says which in
        ``payload_dtype``; table in docs/numerics.md). An explicit "complex64" saves half
        the bandwidth where "auto" would not pick it; the decoder then refuses (DecodeError)
        the erasure patterns it cannot decode within ``CyclicDecoderConfig.max_error``.

    Attributes
    ----------
    nodes : ndarray, shape (n,), complex128
        x_j for each worker j.
    coefficients : ndarray, shape (n, 2s+1), complex128
        coefficients[j, t] = A[j, (j + t) mod n], the weight of worker j's t-th partition
        (the same row for every j: ``window_coefficients``).
    condition : float
        ``window_condition(n, s, stride)``.
    amplification : float
        ``gap_amplification(n, s, stride)``.
    erasure_amplification : float
        ``gap_amplification(n, s, stride, 2 * s)``.
    locator : float
        ``locator_condition(n, s)``.
    pgz : float
        ``pgz_condition(n, s)``.
    """

    name = "cyclic"

    def __init__(
        self,
        n_workers: int,
        n_adversaries: int,
        stride: int | None = None,
        payload_dtype: str = "auto",
        decoder: CyclicDecoderConfig | None = None,
    ) -> None:
        n, s = check_counts(self.name, n_workers, n_adversaries)
        if stride is None:
            stride = construction.best_stride(n, s)
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
            raise ConfigError(f"cyclic option stride must be an integer, got {stride!r}")
        if not 1 <= int(stride) < max(n, 2) or math.gcd(int(stride), n) != 1:
            raise ConfigError(
                f"cyclic option stride must be in 1..n-1 and coprime to n={n}, got {stride}"
            )
        stride = int(stride)
        self.condition = construction.window_condition(n, s, stride)
        self.amplification = construction.gap_amplification(n, s, stride) if n > 1 else 1.0
        self.erasure_amplification = (
            construction.gap_amplification(n, s, stride, 2 * s) if n > 1 else 1.0
        )
        self.locator = construction.locator_condition(n, s)
        self.pgz = construction.pgz_condition(n, s)
        if payload_dtype == "auto":
            fits = (
                self.amplification <= construction.COMPLEX64_MAX_AMPLIFICATION
                and self.erasure_amplification <= construction.COMPLEX64_MAX_ERASURE_AMPLIFICATION
                and self.locator <= construction.COMPLEX64_MAX_LOCATOR_CONDITION
                and self.pgz <= construction.COMPLEX64_MAX_PGZ_CONDITION
            )
            payload_dtype = "complex64" if fits else "complex128"
        if payload_dtype not in ("complex64", "complex128"):
            raise ConfigError(
                f"cyclic option payload_dtype must be 'auto', 'complex64' or 'complex128', "
                f"got {payload_dtype!r}"
            )
        self.n_workers, self.n_adversaries, self.n_partitions = n, s, n
        self.redundancy = 2 * s + 1
        self.stride = stride
        self.payload_dtype = np.dtype(payload_dtype)
        self.options: dict[str, Any] = {"stride": stride, "payload_dtype": payload_dtype}
        if decoder is None:
            decoder = CyclicDecoderConfig.for_dtype(self.payload_dtype, s)
        self.decoder = decoder
        self.nodes = construction.circle_nodes(n, stride)
        self.assignment = np.zeros((n, n), dtype=bool)
        for j in range(n):
            self.assignment[j, [(j + t) % n for t in range(2 * s + 1)]] = True
        self.coefficients = np.tile(construction.window_coefficients(n, s, stride), (n, 1))

    def __repr__(self) -> str:
        return (
            f"CyclicCode(n_workers={self.n_workers}, n_adversaries={self.n_adversaries}, "
            f"stride={self.stride}, payload_dtype={self.payload_dtype.name!r})"
        )

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        """(j, j+1, ..., j+2s) mod n for worker j."""
        check_worker(self, worker)
        n = self.n_workers
        return tuple((int(worker) + t) % n for t in range(2 * self.n_adversaries + 1))

    def encode(self, worker: int, grads: np.ndarray) -> np.ndarray:
        """y_j = sum_t A[j, j+t] g_{j+t}, computed in float64, rounded to ``payload_dtype``.

        Parameters
        ----------
        worker : int
        grads : ndarray, shape (2s+1, d), float32, rows in ``partitions_of(worker)`` order

        Returns
        -------
        ndarray, shape (d,), ``payload_dtype``
        """
        grads = check_grads(self, worker, grads)
        c = self.coefficients[int(worker)]
        g = np.asarray(grads, dtype=np.float64)
        out = np.empty(g.shape[1], dtype=self.payload_dtype)
        out.real = c.real @ g
        out.imag = c.imag @ g
        return out

    def ready(self, received: Mapping[int, np.ndarray]) -> bool:
        """True when decoding now is guaranteed to give the exact sum.

        - All n payloads present: True (nothing more will come).
        - e workers missing or sending NaN/Inf (erasures either way), e <= s: project the
          present payloads and locate the liars; True when the rest is consistent and
          (rows left out) + e <= s. Sound: the received rows form a code of minimum
          distance 2s - e + 1, and the decoded codeword and the true one differ on at most
          (rows left out) + s <= 2s - e rows, so they coincide whatever the missing
          workers would send. Cost O(n d) (one projection pass): call it when a
          straggler is late, not on every arrival.
        - Otherwise False.
        """
        n, s = self.n_workers, self.n_adversaries
        present = [j for j in range(n) if j in received]
        missing = n - len(present)
        if missing == 0:
            return True
        if missing > s:
            return False
        arrays = {
            j: received[j]
            for j in present
            if isinstance(received[j], np.ndarray)
            and received[j].ndim == 1
            and received[j].dtype == self.payload_dtype
            and received[j].flags.c_contiguous
        }
        if len(arrays) != len(present) or len({a.size for a in arrays.values()}) != 1:
            return False
        d = next(iter(arrays.values())).size
        proj = project_rows(arrays, d, np.random.default_rng())
        finite = proj.finite()
        overflowed = [j for j in proj.z if j not in finite.z]
        # A row with NaN/Inf (the PS no longer erases them on arrival) counts as missing: the
        # decoder erases it too. A finite row whose projection overflowed (complex128 values
        # near the float64 limit; float64 sums of complex64 values cannot) keeps the round
        # waiting, as before: only such rows are read again.
        if any(all_finite(arrays[j]) for j in overflowed):
            return False
        missing += len(overflowed)
        if missing > s:
            return False
        try:
            missing_ids = frozenset(set(range(n)) - set(finite.z))
            loc = locate_cyclic(self.nodes, s, finite, missing_ids, self.decoder)
        except DecodeError:
            return False
        return (
            loc.within_budget
            and loc.residual <= self.decoder.factor
            and len(loc.excluded) + missing <= s
        )

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> DecodeResult:
        """Syndrome decoding with a fresh secret projection; see ``decode_cyclic``.

        ``rng`` draws the projection (tests pass a seeded one); None = fresh OS entropy.
        Runs on one OpenBLAS thread (``draco.core.blas_threads``: threaded gemv's stall on
        shared cores; the decode is memory-bound).
        """
        with single_blas_thread():
            return decode_cyclic(
                self.nodes, self.n_adversaries, self.payload_dtype, received, rng, self.decoder
            )
