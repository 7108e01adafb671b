"""DRACO's codes: who computes which partitions, and what each worker sends.

Two codes from Chen et al., "DRACO" (ICML 2018), plus the uncoded baseline:

``repetition``
    The n workers form G = n // (2s+1) groups of consecutive ids, sizes differing by at most
    one (each >= 2s+1; no divisibility needed). A group of m workers holds the m partitions
    with its members' ids; every member sends the float32 sum of those m partition gradients,
    summed in partition order so honest members agree bit for bit. Decoding: a majority vote
    per group (``draco.core.vote.decode_repetition``).

``cyclic``
    Worker j computes partitions j, j+1, ..., j+2s (mod n) and sends ONE complex vector
    y_j = sum_k A[j, k] g_k. Row j of A is the value at the DFT node x_j of the polynomials
    p_k (degree < n-2s, p_k(0) = 1, p_k vanishing at every node outside partition k's
    window), so every column of Y = A G is a Reed-Solomon codeword over the n-th roots of
    unity whose constant coefficient is the wanted sum [CWCP18, section 5]. Departure from
    the paper (docs/numerics.md, "Construction"): worker j sits at
    x_j = exp(-2 pi i a j / n) with the stride a coprime to n that minimises the condition
    number of a window's Vandermonde matrix, instead of a = 1 (a contiguous arc: condition
    numbers up to 1e17 at n = 100).
    Decoding: ``draco.core.cyclic_decoder.decode_cyclic``.

``none``
    No redundancy; robust aggregation (``draco.core.baseline.UncodedCode``).

Example::

    code = make_code("cyclic", 15, 3)
    payloads = {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(15)}
    result = code.decode(payloads)        # result.gradient == grads.sum(axis=0) (to ~1e-7)

References: see ``draco.core.decoding``. Numerics: ``docs/numerics.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from draco.core.blas_threads import single_blas_thread
from draco.core.cyclic_decoder import decode_cyclic
from draco.core.decoder_types import CyclicDecoderConfig, DecodeResult, all_finite
from draco.core.locator import locate_cyclic
from draco.core.projection import project_rows
from draco.core.vote import decode_repetition, repetition_ready
from draco.core.weights import extended_roots, recovery_weights, roots_of_unity
from draco.errors import ConfigError, DecodeError

__all__ = [
    "CODES",
    "Code",
    "CyclicCode",
    "RepetitionCode",
    "adjacent_workers",
    "best_stride",
    "circle_nodes",
    "gap_amplification",
    "locator_condition",
    "make_code",
    "pgz_condition",
    "window_coefficients",
    "window_condition",
]

CODES: tuple[str, ...] = ("repetition", "cyclic", "none")

#: complex64 payloads need ``gap_amplification`` <= this: measured (docs/numerics.md), s liars
#: adjacent on the circle cost a relative error of about 1.6e-8 x the amplification with
#: complex64 payloads, so 100 keeps it below 1e-6 with margin.
COMPLEX64_MAX_AMPLIFICATION = 100.0
#: ... and ``locator_condition`` <= this: measured with complex64 payloads and s liars
#: adjacent on the circle (constant attack), locating is exact with relative error <= 6e-7 up
#: to a condition of 7e5 and fails from 3e6 (n = 90, s = 15..31; docs/numerics.md).
COMPLEX64_MAX_LOCATOR_CONDITION = 1e5
#: ... and ``pgz_condition`` <= this: measured, complex64 payloads with s ~ n/2 liars at
#: random positions were located for every n <= 64 (condition <= 6.8e14) but not at n = 68,
#: s = 28 (3e15), where complex128 works (docs/numerics.md).
COMPLEX64_MAX_PGZ_CONDITION = 1e15
#: ... and ``gap_amplification`` with 2s adjacent workers out (the worst erasures inside the
#: budget) <= this: 450 x 2.2e-8 = 1e-5 = ``CyclicDecoderConfig.max_error`` (2.2e-8: the
#: largest error per unit of amplification measured with complex64), so every
#: pattern of errors and erasures inside the budget decodes (measured: 2s adjacent erasures
#: at amplification 3.8e7 gave a relative error of 1.4e-2 with complex64).
COMPLEX64_MAX_ERASURE_AMPLIFICATION = 450.0


@runtime_checkable
class Code(Protocol):
    """The interface every code offers (docs/architecture.md, "Codes")."""

    name: str
    n_workers: int
    n_adversaries: int
    n_partitions: int
    redundancy: int
    assignment: np.ndarray
    payload_dtype: np.dtype
    options: dict[str, Any]

    def partitions_of(self, worker: int) -> tuple[int, ...]: ...

    def encode(self, worker: int, grads: np.ndarray) -> np.ndarray: ...

    def ready(self, received: Mapping[int, np.ndarray]) -> bool: ...

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> DecodeResult: ...


def _check_counts(name: str, n_workers: object, n_adversaries: object) -> tuple[int, int]:
    for label, value in (("n_workers", n_workers), ("n_adversaries", n_adversaries)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"code {name!r}: {label} must be an integer, got {value!r}")
    n, s = int(n_workers), int(n_adversaries)  # type: ignore[call-overload]
    if s < 0:
        raise ConfigError(f"code {name!r}: n_adversaries must be >= 0, got {s}")
    if n < 2 * s + 1 or n < 1:
        raise ConfigError(
            f"code {name!r} with {s} adversaries needs at least 2s+1 = {2 * s + 1} workers, "
            f"got {n}: add workers or lower --adversaries"
        )
    return n, s


def _check_grads(code: Code, worker: int, grads: np.ndarray) -> np.ndarray:
    if not 0 <= int(worker) < code.n_workers:
        raise ValueError(f"worker {worker} out of range 0..{code.n_workers - 1}")
    grads = np.asarray(grads)
    r = len(code.partitions_of(worker))
    if grads.ndim != 2 or grads.shape[0] != r:
        raise ValueError(
            f"worker {worker} must encode {r} partition gradients of shape ({r}, d), "
            f"got shape {grads.shape}"
        )
    return grads


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
        n, s = _check_counts(self.name, n_workers, n_adversaries)
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
        if not 0 <= int(worker) < self.n_workers:
            raise ValueError(f"worker {worker} out of range 0..{self.n_workers - 1}")
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
        grads = _check_grads(self, worker, grads)
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


def window_condition(n: int, s: int, stride: int) -> float:
    """2-norm condition number of the Vandermonde matrix of one window's 2s+1 nodes.

    Every window {x_k, ..., x_{k+2s}} is a rotation of {w^(a m): m = 0..2s} with
    w = exp(-2 pi i / n), a = ``stride``, so one matrix V[m, t] = w^(a m t), t = 0..2s, gives
    the condition number of them all. It bounds the encoding coefficients
    |A[j, k]| = n / prod_{i in window, i != j} |x_j - x_i|.
    """
    m = np.arange(2 * s + 1)
    x = np.exp(-2j * np.pi * ((stride * m) % n) / n)
    v = x[:, None] ** m[None, :]
    return float(np.linalg.cond(v))


def circle_nodes(n: int, stride: int) -> np.ndarray:
    """x_j = exp(-2 pi i a j / n) for every worker j (a = ``stride``), shape (n,), complex128."""
    nodes: np.ndarray = roots_of_unity(n)[(stride * np.arange(n)) % n]
    return nodes


def adjacent_workers(n: int, stride: int, count: int, first: int = 0) -> list[int]:
    """The ``count`` workers whose nodes are consecutive on the circle from node ``first``.

    Node m belongs to worker a^-1 m mod n (a = ``stride``): adjacency on the circle, the
    worst placement for liars and erasures, is not adjacency of worker ids.
    """
    inv = pow(stride, -1, n) if n > 1 else 0
    return [(inv * (first + m)) % n for m in range(count)]


def gap_amplification(n: int, s: int, stride: int, out: int | None = None) -> float:
    """sqrt(n) ||w||_2 of the recovery weights when ``out`` workers adjacent on the circle
    are left out (default s: the liars' worst placement; 2s: the worst erasures).

    1 means no loss against decoding from all n honest rows; the rounding error of the
    payloads reaches the decoded sum multiplied by about this factor. Adjacent DFT nodes
    (a gap in the circle) are the worst placement; it grows quickly with the gap: s out,
    3.3 at n=45, s=5; 12 at n=100, s=10; 140 at n=127, s=21. 2s out: 347 at n=45, s=5;
    6.4e4 at n=45, s=10.

    These are the float64 minimum-norm weights of ``recovery_weights``. Where the gap is
    so long that their small system is singular in float64 (2s out, beyond about 1e8) they
    are implicitly regularised and smaller than the exact weights (which are unique with
    2s out: sqrt(n) ||w|| up to 2e17 at n = 128, s = 42); the decoder then uses
    ``weights.decoder_weights``. The dtype rule only compares values <= 450, where both agree.
    """
    count = s if out is None else out
    if s == 0 or count == 0:
        return 1.0
    gap = adjacent_workers(n, stride, count)
    return float(np.sqrt(n) * np.linalg.norm(recovery_weights(circle_nodes(n, stride), s, gap)))


@functools.lru_cache(maxsize=1024)
def locator_condition(n: int, s: int) -> float:
    """Condition number of the syndromes of s liars adjacent on the circle (the worst case).

    The decoder sees the liars only through the syndromes S_q = sum_i e_i x_i^q,
    q = 1..2s: the 2s x s matrix V[q, i] = x_i^q of the liars' nodes. Its 2-norm condition
    number is the factor by which payload rounding is amplified when the decoder separates
    the liars' errors from the honest rows (and tells the liar set from its neighbours).
    It is largest for s consecutive nodes x_i = exp(-2 pi i m / n), m = 0..s-1 (whatever
    the stride: every node set is the set of all n-th roots of unity), e.g. 1e3 at n = 45,
    s = 5; 5e5 at n = 64, s = 14; 2e8 at n = 90, s = 20; 5e11 at n = 128, s = 34; it falls
    again as s approaches n/2.
    """
    if s == 0:
        return 1.0
    x = np.exp(-2j * np.pi * np.arange(s) / n)
    q = np.arange(1, 2 * s + 1)
    return float(np.linalg.cond(x[None, :] ** q[:, None]))


@functools.lru_cache(maxsize=1024)
def pgz_condition(n: int, s: int) -> float:
    """Condition number of the s x s Vandermonde matrix of s nodes adjacent on the circle.

    The Peterson-Gorenstein-Zierler error locator (``draco.core.locator_fit.pgz_ranking``)
    solves a Toeplitz system that factors through this matrix twice; it is the decoder's
    best start for many liars spread over the circle, and its accuracy from rounded
    payloads degrades with this number (e.g. 2e8 at n = 38, s = 18; 3e15 at n = 68, s = 28).
    """
    if s == 0:
        return 1.0
    x = np.exp(-2j * np.pi * np.arange(s) / n)
    t = np.arange(s)
    return float(np.linalg.cond(x[None, :] ** t[:, None]))


def window_coefficients(n: int, s: int, stride: int) -> np.ndarray:
    """c_t = A[j, j + t] for t = 0..2s, the same for every worker j; shape (2s+1,), complex128.

    A[j, k] = p_k(x_j) for worker j in partition k's window W_k = {k-2s, ..., k}, where
    p_k(x) = prod_{i not in W_k} (1 - x / x_i) has degree n-2s-1, p_k(0) = 1 and vanishes
    outside the window. Since prod_{i != j} (1 - x_j / x_i) = n over all n-th roots of
    unity, p_k(x_j) = n / prod_{i in W_k, i != j} (1 - x_j / x_i): 2s factors, no
    cancellation. With k = j + t and i = k - u, x_j / x_i = w^(a (u - t)) (w = exp(-2 pi i
    / n), a = ``stride``) does not depend on j: every row of A is a rotation of one row.

    Computed in long double and rounded once. Why: the decoder's arithmetic assumes every
    row is the same exact codeword map; rows computed separately in float64 differed by
    4e-14 (relative), a code error that the recovery weights amplify like payload
    rounding - with 2s adjacent erasures at n = 100, s = 40 the sum was off by 1.4e-4
    instead of 1.7e-6.
    """
    u = np.arange(2 * s + 1)
    ratios = extended_roots(stride * (u[None, :] - u[:, None]), n)  # [t, u] = w^(a (u - t))
    factors = 1 - ratios
    np.fill_diagonal(factors, 1)
    coefficients: np.ndarray = (n / np.prod(factors, axis=1)).astype(np.complex128)
    return coefficients


@functools.lru_cache(maxsize=256)
def best_stride(n: int, s: int) -> int:
    """The stride a in [1, n/2], gcd(a, n) = 1, minimising ``window_condition``.

    Ties go to the smallest a.

    a and n - a give mirror-image node sets (same condition number), so half the range
    suffices. Cost O(n s^3), cached.
    """
    if n <= 2:
        return 1
    best, best_cond = 1, math.inf
    for a in range(1, n // 2 + 1):
        if math.gcd(a, n) != 1:
            continue
        c = window_condition(n, s, a)
        if c < best_cond * (1 - 1e-9):
            best, best_cond = a, c
    return best


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
        n, s = _check_counts(self.name, n_workers, n_adversaries)
        if stride is None:
            stride = best_stride(n, s)
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
            raise ConfigError(f"cyclic option stride must be an integer, got {stride!r}")
        if not 1 <= int(stride) < max(n, 2) or math.gcd(int(stride), n) != 1:
            raise ConfigError(
                f"cyclic option stride must be in 1..n-1 and coprime to n={n}, got {stride}"
            )
        stride = int(stride)
        self.condition = window_condition(n, s, stride)
        self.amplification = gap_amplification(n, s, stride) if n > 1 else 1.0
        self.erasure_amplification = gap_amplification(n, s, stride, 2 * s) if n > 1 else 1.0
        self.locator = locator_condition(n, s)
        self.pgz = pgz_condition(n, s)
        if payload_dtype == "auto":
            fits = (
                self.amplification <= COMPLEX64_MAX_AMPLIFICATION
                and self.erasure_amplification <= COMPLEX64_MAX_ERASURE_AMPLIFICATION
                and self.locator <= COMPLEX64_MAX_LOCATOR_CONDITION
                and self.pgz <= COMPLEX64_MAX_PGZ_CONDITION
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
        self.nodes = circle_nodes(n, stride)
        self.assignment = np.zeros((n, n), dtype=bool)
        for j in range(n):
            self.assignment[j, [(j + t) % n for t in range(2 * s + 1)]] = True
        self.coefficients = np.tile(window_coefficients(n, s, stride), (n, 1))

    def __repr__(self) -> str:
        return (
            f"CyclicCode(n_workers={self.n_workers}, n_adversaries={self.n_adversaries}, "
            f"stride={self.stride}, payload_dtype={self.payload_dtype.name!r})"
        )

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        """(j, j+1, ..., j+2s) mod n for worker j."""
        if not 0 <= int(worker) < self.n_workers:
            raise ValueError(f"worker {worker} out of range 0..{self.n_workers - 1}")
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
        grads = _check_grads(self, worker, grads)
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


def make_code(name: str, n_workers: int, n_adversaries: int, **options: Any) -> Code:
    """Build a code by name.

    Parameters
    ----------
    name : {"repetition", "cyclic", "none"}
    n_workers, n_adversaries : int
        n and s; the DRACO codes need n >= 2s+1.
    **options
        repetition: ``rtol``. cyclic: ``stride``, ``payload_dtype``. none: ``aggregator`` and
        the aggregator's options (see ``draco.core.baseline.UncodedCode``). ``code.options``
        holds what a worker passes back here to rebuild the same code.

    Raises
    ------
    ConfigError
        Unknown name or option, impossible parameters.
    """
    if name == "repetition":
        unknown = set(options) - {"rtol"}
        cls: Any = RepetitionCode
    elif name == "cyclic":
        unknown = set(options) - {"stride", "payload_dtype"}
        cls = CyclicCode
    elif name == "none":
        from draco.core.baseline import UncodedCode  # lazy: baseline imports this package

        return UncodedCode(n_workers, n_adversaries, **options)
    else:
        raise ConfigError(f"unknown code {name!r}; choose one of {', '.join(CODES)}")
    if unknown:
        raise ConfigError(f"code {name!r} has no option(s) {', '.join(sorted(unknown))}")
    code: Code = cls(n_workers, n_adversaries, **options)
    return code
