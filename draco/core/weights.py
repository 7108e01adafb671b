"""Recovery and check weights of the cyclic code, and the expected error of a recovery.

The decoded sum is Re(w^T Y) over the presumed-honest rows; w depends only on which rows
are left out (``recovery_weights``, or ``decoder_weights`` with an extended-precision
regularised solve when the left-out nodes cluster on the circle). Node powers are looked up
in one table of roots of unity, so every parity check is exact to one rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from draco.core.decoder_types import CyclicDecoderConfig

__all__ = [
    "check_weights",
    "decoder_weights",
    "expected_error",
    "extended_roots",
    "node_powers",
    "recovery_weights",
    "roots_of_unity",
]


def recovery_weights(nodes: np.ndarray, s: int, bad: Sequence[int]) -> np.ndarray:
    """Weights w (n,) with w_bad = 0 and sum_j w_j c_j = p(0) for every codeword c.

    The least-squares estimate of the constant coefficient p(0) = sum of the partition
    gradients from the rows H = all \\ bad is w^T y with w the minimum-norm solution of
    sum_{j in H} w_j x_j^t = [t == 0], t = 0..n-2s-1 (Gauss-Markov). Write w = 1/n + v:
    sum_j x_j^k = n [k == 0 mod n] over the n-th roots of unity, so v is a combination of
    the parity rows, v_j = sum_{q=1..2s} beta_q x_j^q, and ||w||^2 = 1/n + n ||beta||^2.
    Minimising ||w|| subject to w_bad = 0 is the small minimum-norm problem

        sum_q beta_q x_m^q = -1/n   for m in bad,

    (|bad| x 2s, solved by lstsq in float64) whose conditioning depends only on how the bad
    nodes cluster, not on the huge n x (n-2s) Vandermonde matrix of the direct fit.

    Returns
    -------
    ndarray, shape (n,), complex128
    """
    n = nodes.size
    w = np.full(n, 1.0 / n, dtype=complex)
    bad = list(bad)
    if bad:
        parity = node_powers(nodes, np.arange(1, 2 * s + 1))  # (2s, n)
        a = parity[:, bad].T
        beta, *_ = np.linalg.lstsq(a, np.full(len(bad), -1.0 / n, dtype=complex), rcond=None)
        w = w + beta @ parity
        w[bad] = 0.0
    return w


def check_weights(
    nodes: np.ndarray, s: int, bad: Sequence[int], rng: np.random.Generator, norm: float
) -> np.ndarray:
    """A secret random parity check delta (n,) of the kept rows: sum_j delta_j c_j = 0.

    delta_j = sum_{q=1..2s} beta_q x_j^q annihilates every codeword (see
    ``recovery_weights``); beta is a random complex combination of the null space of the
    bad rows' parity columns, so delta_bad = 0 and only kept rows enter. A nonzero error e on
    the kept rows that is not itself a codeword has (V e) != 0 for the kept rows' checks V,
    and then delta^T e != 0 for all but a null set of draws [Fre97].

    Returns
    -------
    ndarray, shape (n,), complex128, with ||delta||_2 = ``norm`` (zeros if the bad rows use
    up all 2s checks: nothing is left to verify).
    """
    bad = list(bad)
    if len(bad) >= 2 * s:
        return np.zeros(nodes.size, dtype=complex)
    parity = node_powers(nodes, np.arange(1, 2 * s + 1))  # (2s, n)
    if bad:
        _, _, vh = np.linalg.svd(parity[:, bad].T)
        null = vh[len(bad) :].conj().T  # (2s, 2s - |bad|), orthonormal columns
    else:
        null = np.eye(2 * s, dtype=complex)
    rho = rng.standard_normal(null.shape[1]) + 1j * rng.standard_normal(null.shape[1])
    delta = (null @ rho) @ parity
    delta[bad] = 0.0
    return delta * (norm / np.linalg.norm(delta))


def expected_error(w: np.ndarray, s: int, nodes: np.ndarray, config: CyclicDecoderConfig) -> float:
    """Expected relative error of the sum recovered with weights w (complex128, as used).

    Two parts: payload rounding, config.rounding x sqrt(n) ||w||_2; and the weights' own
    error, ||r||_2 with r_t = sum_j w_j x_j^t - [t == 0], t = 0..n-2s-1 (w^T c = p(0) for
    every codeword iff r = 0; the sum is off by sum_t r_t a_t for the codeword's
    coefficients a_t, which the model takes to be of the sum's size). r is evaluated in
    extended precision (``np.clongdouble``): in float64 its own rounding, about
    1e-16 x ||w||_1, would swamp it once ||w|| passes 1e9. The second part matters when
    the bad nodes cluster so tightly that the float64 small system of ``recovery_weights``
    is singular: e.g. 74 adjacent bad nodes at n = 99, s = 37 leave ||r|| = 4.9e-5 (a
    measured error of 1.5e-5 with complex128 payloads); ``_regularised_weights`` then does
    better.
    """
    n = w.size
    powers = node_powers(nodes, np.arange(n - 2 * s), extended=True)
    r = powers @ w.astype(powers.dtype)
    r[0] -= 1
    rounding = config.rounding * float(np.sqrt(n) * np.linalg.norm(w))
    return rounding + float(np.sqrt(np.sum(np.abs(r) ** 2)))


#: pi to 36 digits, parsed into the platform's long double (80-bit on x86-64 Linux:
#: eps 1.1e-19; on platforms where long double is double the extended path gains nothing).
_PI_EXTENDED = np.longdouble("3.14159265358979323846264338327950288")
#: ``decoder_weights`` tries the extended-precision weights once the float64 ones are expected to
#: be off by more than this fraction of config.max_error (1e-6 by default: the issue's
#: accuracy goal).
_REFINE_FRACTION = 0.1
#: Tikhonov parameters tried by ``_regularised_weights``, in units of rounding x n (the
#: balance point of the two parts of ``expected_error``). Measured, 2s adjacent
#: erasures (n, s) = (70, 25), (99, 37), (100, 35), (100, 44), (128, 42): the best of
#: 10^-3..10^3 was always one of 10^-1, 10^0, 10^1.
_TIKHONOV_GRID = (0.1, 1.0, 10.0)


def roots_of_unity(n: int) -> np.ndarray:
    """exp(-2 pi i m / n) for m = 0..n-1, shape (n,), complex128: the one table every node
    and node power of a code is read from (``codes.circle_nodes``, ``node_powers``)."""
    roots: np.ndarray = np.exp(-2j * np.pi * np.arange(n) / n)
    return roots


def extended_roots(k: np.ndarray, n: int) -> np.ndarray:
    """exp(-2 pi i k / n) in long double (np.clongdouble), same shape as the integers k."""
    theta = -2 * _PI_EXTENDED * np.mod(k, n).astype(np.longdouble) / n
    out: np.ndarray = np.cos(theta) + 1j * np.sin(theta)
    return out


def node_powers(nodes: np.ndarray, exponents: np.ndarray, extended: bool = False) -> np.ndarray:
    """P[i, j] = x_j^t_i for the exponents t_i, shape (len(exponents), n), rounded once.

    ``nodes`` are all n nodes x_j = exp(-2 pi i k_j / n) of a code. x_j^t is the root of
    unity of index k_j t mod n, looked up instead of raised to a power: a float64 power
    of the rounded node is off by about t x 1e-16 (1e-14 at t = 126), and the code itself
    is exact to one rounding (``codes.window_coefficients``), so the decoder's parity
    checks must be too. ``extended``: in long double (``extended_roots``).
    """
    n = nodes.size
    k = np.mod(np.round(-np.angle(nodes) * n / (2 * np.pi)).astype(np.int64), n)
    index = np.outer(np.asarray(exponents, dtype=np.int64), k) % n
    # n distinct values whatever the exponents: evaluate each root once, then look up.
    roots = extended_roots(np.arange(n), n) if extended else roots_of_unity(n)
    out: np.ndarray = roots[index]
    return out


def _householder_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b||_2 for a tall full-rank a (m, k), in a's own dtype (any precision).

    Householder QR (backward stable), written out because LAPACK has no long double.
    Cost O(m k^2) numpy operations on (m, k) slices: 30-100 ms for k = 2s <= 126.
    """
    a = a.copy()
    b = b.copy()
    k = a.shape[1]
    for j in range(k):
        col = a[j:, j]
        norm = np.sqrt(np.sum(np.abs(col) ** 2))
        if norm == 0:
            continue
        v = col.copy()
        v[0] += (col[0] / abs(col[0]) if col[0] != 0 else 1) * norm  # no cancellation
        v /= np.sqrt(np.sum(np.abs(v) ** 2))
        a[j:, j:] -= 2 * np.outer(v, v.conj() @ a[j:, j:])
        b[j:] -= 2 * v * (v.conj() @ b[j:])
    x = np.zeros(k, dtype=a.dtype)
    for j in range(k - 1, -1, -1):
        x[j] = (b[j] - a[j, j + 1 :] @ x[j + 1 :]) / a[j, j]
    return x


def _regularised_weights(
    nodes: np.ndarray, s: int, bad: Sequence[int], config: CyclicDecoderConfig
) -> tuple[np.ndarray, float]:
    """Recovery weights computed in long double with Tikhonov regularisation.

    For bad nodes clustered on the circle the small system of ``recovery_weights`` is
    singular in float64, and the exact weights may be huge (2s adjacent erasures: sqrt(n)
    ||w|| up to 2e17 at n = 128, so that complex128 payload rounding alone would cost a
    relative error of 6). The best weights trade the two parts of ``expected_error``.

    Steps
    -----
    1. A[m, q] = x_m^q for m in bad, q = 1..2s, in long double (``node_powers``).
    2. For each lambda = g x config.rounding x n, g in _TIKHONOV_GRID: beta minimises
       ||A beta + 1/n||^2 + lambda^2 ||beta||^2 (``_householder_lstsq`` on [A; lambda I]),
       w = 1/n + sum_q beta_q x^q, w_bad = 0, rounded to complex128.
    3. Keep the w with the smallest ``expected_error`` (evaluated on the rounded weights).

    Measured (2s adjacent erasures, expected error float64 -> this; 40-digit optimum of
    the same model with mpmath): (70, 25) 1.1e-5 -> 5.7e-8; (99, 37) 4.9e-5 -> 3.5e-6
    (3.3e-6); (100, 35) 1.4e-5 -> 1.2e-6 (1.2e-6); (100, 44) 2.7e-5 -> 1.3e-7.

    Returns
    -------
    w : ndarray, shape (n,), complex128
    expected : float
        Its ``expected_error``.
    """
    n = nodes.size
    bad = list(bad)
    gram = node_powers(nodes, np.arange(1, 2 * s + 1), extended=True)  # (2s, n)
    a = gram[:, bad].T
    rhs = np.concatenate([np.full(len(bad), -1 / np.longdouble(n)), np.zeros(2 * s)])
    best: tuple[np.ndarray, float] | None = None
    for g in _TIKHONOV_GRID:
        lam = np.longdouble(g * config.rounding * n)
        beta = _householder_lstsq(
            np.concatenate([a, lam * np.eye(2 * s, dtype=a.dtype)]), rhs.astype(a.dtype)
        )
        w = (1 / np.longdouble(n) + beta @ gram).astype(np.complex128)
        w[bad] = 0.0
        expected = expected_error(w, s, nodes, config)
        if best is None or expected < best[1]:
            best = (w, expected)
    assert best is not None
    return best


def decoder_weights(
    nodes: np.ndarray, s: int, bad: Sequence[int], config: CyclicDecoderConfig
) -> tuple[np.ndarray, float]:
    """Recovery weights without the ``bad`` rows and their expected relative error.

    The float64 minimum-norm weights (``recovery_weights``, microseconds) unless they are
    expected to be off by more than _REFINE_FRACTION x config.max_error; then the better
    of them and the extended-precision ``_regularised_weights`` (0.1-0.3 s, cached per
    pattern: a worker that stays away keeps its erasure pattern from round to round).
    """
    w = recovery_weights(nodes, s, bad)
    expected = expected_error(w, s, nodes, config)
    if expected > _REFINE_FRACTION * config.max_error and bad:
        w2, expected2 = _cached_regularised(nodes.tobytes(), s, tuple(sorted(bad)), config)
        if expected2 < expected:
            return w2.copy(), expected2
    return w, expected


@functools.lru_cache(maxsize=32)
def _cached_regularised(
    node_bytes: bytes, s: int, bad: tuple[int, ...], config: CyclicDecoderConfig
) -> tuple[np.ndarray, float]:
    return _regularised_weights(np.frombuffer(node_bytes, dtype=np.complex128), s, bad, config)
