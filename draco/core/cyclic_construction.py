"""The cyclic code's construction: nodes on the circle, the stride, the encoding row, and
the condition numbers that choose the payload dtype.

Worker j sits at the DFT node x_j = exp(-2 pi i a j / n) with the stride a coprime to n that
minimises the condition number of a window's Vandermonde matrix (``best_stride``), instead of
the paper's a = 1 (a contiguous arc: condition numbers up to 1e17 at n = 100). Every row of
the encoding matrix is a rotation of one row (``window_coefficients``). The other functions
measure how rounding is amplified (docs/numerics.md, "Construction" and the dtype rule);
``CyclicCode`` (``draco.core.cyclic_code``) compares them with the ``COMPLEX64_*`` limits.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from draco.core.weights import extended_roots, recovery_weights, roots_of_unity

__all__ = [
    "COMPLEX64_MAX_AMPLIFICATION",
    "COMPLEX64_MAX_ERASURE_AMPLIFICATION",
    "COMPLEX64_MAX_LOCATOR_CONDITION",
    "COMPLEX64_MAX_PGZ_CONDITION",
    "adjacent_workers",
    "best_stride",
    "circle_nodes",
    "gap_amplification",
    "locator_condition",
    "pgz_condition",
    "window_coefficients",
    "window_condition",
]

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
