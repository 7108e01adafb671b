"""The cyclic locator's linear algebra: the code fitted outside a suspect set, and the
Peterson-Gorenstein-Zierler ranking of the rows.

``locate_cyclic`` (``draco.core.locator``) searches over suspect sets; every set it tries is
judged by ``fit_outside`` (a least-squares fit of the code to the rows kept, Householder QR
of the left-out rows' parity columns), and its first candidates come from ``pgz_ranking``.
Both work on whitened projections (one complex value per row and lane, noise std <= 1).

References: [Bla03] and [For65], as listed in ``draco.core.locator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Fit", "fit_outside", "pgz_ranking"]


@dataclass(frozen=True)
class Fit:
    """Least-squares fit of the code to the kept rows (``fit_outside``)."""

    residual: float  # normalised: O(1) when the kept rows are consistent
    score: np.ndarray  # (m,) worst-lane |deviation| / std of every clean row, in noise units
    sharp: np.ndarray  # (m,) bool: the row's codeword value is pinned down (std small)
    evidence: np.ndarray  # (m,) suspects: worst-lane |deviation| / (own noise + prediction's)
    deviation: np.ndarray  # (m,) suspects: worst-lane |z_j - c_j| (units of nu)


def fit_outside(
    g: np.ndarray,
    zs: np.ndarray,
    g_known: np.ndarray,
    suspects: Sequence[int],
    nu: float,
    sharp_level: float,
    own: np.ndarray,
) -> Fit:
    """Fit the code to the clean rows outside ``suspects``; score every clean row against it.

    Parameters
    ----------
    g : ndarray, shape (2s, m), complex128
        g[q-1, i] = x_i^q for the m clean rows (the parity checks: c is a codeword iff
        g_all c = 0, and g_all g_all^H = n I over the n-th roots of unity).
    zs : ndarray, shape (m, K), complex128
        The clean rows' projections.
    g_known : ndarray, shape (2s, e), complex128
        Parity columns of the rows excluded anyway (erasures, set-aside rows).
    suspects : sequence of int
        Indices (into the clean rows) left out of the fit.
    nu : float
        Noise standard deviation of one projection.
    sharp_level : float
        A suspect's predicted value counts as pinned down when its std is below this.
    own : ndarray, shape (m, K), float64
        Each clean row's own noise bound per lane, in units of nu.

    Steps (the excluded rows' values never enter the arithmetic, however huge they are)
    -----------------------------------------------------------------------------------
    1. S~ = g_K z_K, the kept rows' syndromes (K lanes). The fitted codeword c satisfies
       g_X c_X = -(S~ - g_K u_K) where u_K = z_K - c_K is the kept rows' misfit.
    2. QR of g_X = [Q1 Q2] [R1; 0] (Householder: backward stable however clustered the
       excluded nodes). Minimising ||u_K|| gives u_K = g_K^H Q2 Q2^H S~ / n (because
       Q2^H g_K g_K^H Q2 = n I) and c_X = -R1^{-1} Q1^H S~.
    3. Residual ||Q2^H S~|| / (nu sqrt(n (2s - |X|))), worst lane; each component of Q2^H S~
       has noise std nu sqrt(n) exactly.
    4. Scores: kept row j: |u_j| / (nu sqrt(h_j)), h_j = ||Q2^H g_j||^2 / n its leverage;
       suspect j: |z_j - c_j| / (nu (1 + sqrt(n ||row j of R1^{-1}||^2 - 1))), prediction
       noise plus its own; its evidence (step 5 of ``locate_cyclic``): the same deviation
       over the row's OWN noise bound plus the prediction's, worst lane.
    """
    m = zs.shape[0]
    n_check = g.shape[0]
    n = float(np.sum(np.abs(g[0]) ** 2) + np.sum(np.abs(g_known[0]) ** 2))  # = n (|x| = 1)
    sus = np.asarray(list(suspects), dtype=int)
    kept_mask = np.ones(m, dtype=bool)
    kept_mask[sus] = False
    # Step 1.
    s_tilde = g[:, kept_mask] @ zs[kept_mask]
    gx = np.concatenate([g_known, g[:, sus]], axis=1)
    n_x = gx.shape[1]
    # Step 2.
    if n_x:
        q_full, r_full = np.linalg.qr(gx, mode="complete")
        q1, q2, r1 = q_full[:, :n_x], q_full[:, n_x:], r_full[:n_x]
    else:
        q1, q2, r1 = np.zeros((n_check, 0), complex), np.eye(n_check, dtype=complex), None
    t = q2.conj().T @ s_tilde  # (2s - |X|, K)
    # Step 3.
    dof = n_check - n_x
    if dof > 0:
        residual = float(np.max(np.linalg.norm(t, axis=0)) / (nu * np.sqrt(n * dof)))
    else:
        residual = 0.0
    # Step 4.
    score = np.zeros(m)
    evidence = np.zeros(m)
    deviation = np.zeros(m)
    sharp = np.zeros(m, dtype=bool)
    proj = q2.conj().T @ g  # (dof, m)
    lev = np.sum(np.abs(proj) ** 2, axis=0) / n
    dev = (proj.conj().T @ t) / n  # (m, K): u_j for kept rows
    kept_idx = np.flatnonzero(kept_mask)
    score[kept_idx] = np.max(np.abs(dev[kept_idx]), axis=1) / (
        nu * np.sqrt(np.maximum(lev[kept_idx], 1e-300))
    )
    sharp[kept_idx] = True
    if sus.size:
        assert r1 is not None
        rinv = np.linalg.solve(r1, np.eye(n_x, dtype=complex))
        c_x = -(rinv @ (q1.conj().T @ s_tilde))[g_known.shape[1] :]
        amp = np.linalg.norm(rinv, axis=1)[g_known.shape[1] :]
        spread = np.sqrt(np.maximum(n * amp**2 - 1.0, 0.0))
        std = nu * (1.0 + spread)
        dev = np.abs(zs[sus] - c_x)
        score[sus] = np.max(dev, axis=1) / std
        evidence[sus] = np.max(dev / (nu * (own[sus] + spread[:, None])), axis=1)
        deviation[sus] = np.max(dev, axis=1)
        sharp[sus] = std <= sharp_level
    return Fit(residual, score, sharp, evidence, deviation)


def pgz_ranking(
    nodes: np.ndarray, powers: np.ndarray, zs: np.ndarray, known: np.ndarray, s: int, tau: int
) -> np.ndarray:
    """Clean rows ranked most suspect first by the Peterson-Gorenstein-Zierler locator.

    Steps 2-5 of ``locate_cyclic``: Forney's modified syndromes (the erasures ``known``
    removed), the error locator of degree ``tau`` as the smallest right singular vector of
    the stacked Toeplitz systems of all lanes, Chien search (|sigma(1/x_j)|, ascending).
    Exact without noise; with noise its accuracy degrades like the square of the condition
    number of the liars' Vandermonde matrix, so ``locate_cyclic`` only uses it as a
    starting point.

    Modified syndromes, evaluated directly [For65; Bla03, 7.4]: with the erasure polynomial
    Gamma(x) = prod_{e in known} (x - x_e) (degree eps),

        Xi_m = sum_{j clean} z_j Gamma(x_j) x_j^m,   m = 1 .. 2s - eps.

    Gamma vanishes on the erased nodes, so the sum may run over all nodes; for a codeword
    c_j = p(x_j), deg p < n - 2s, every monomial of p Gamma x^m has degree in 1 .. n-1 and
    sums to zero over the n-th roots of unity: Xi depends on the errors e_j only, as the
    ordinary syndromes of errors e_j Gamma(x_j). Gamma(x_j) is evaluated as a product of
    eps factors (no cancellation); the textbook route, convolving the coefficients of Gamma
    with the syndromes, loses about log10(max_k |Gamma_k|) digits (11 with 40 adjacent
    erasures, where it located nothing at n = 90, s = 39).

    ``nodes`` (m,) are the clean rows' nodes, ``powers`` (2s, m) their ``node_powers``
    1..2s, ``known`` the erased nodes.
    """
    eps = known.size
    gamma = np.prod(nodes[:, None] - known[None, :], axis=1) if eps else np.ones(nodes.size)
    peak = float(np.max(np.abs(gamma)))
    gamma = gamma / peak if peak > 0 else gamma  # |Gamma| up to 2^eps: normalise
    xi = powers[: 2 * s - eps] @ (gamma[:, None] * zs)  # (2s - eps, K)
    # Newton's identities sum_k sigma_k Xi_{m-k} = 0, m = tau+1 .. 2s-eps (Xi_m = xi[m-1]),
    # one block of rows per lane. Lanes are whitened (``locate_cyclic`` step 1): a lane
    # holding only rounding weighs O(1), a lane holding a lie weighs as much as the lie.
    # (Scaling each lane to unit norm instead let noise-only lanes outvote the lie's lane:
    # sparse lies failed.)
    mm = np.arange(tau + 1, 2 * s - eps + 1)
    index = mm[:, None] - np.arange(tau + 1)[None, :] - 1  # (rows, tau + 1)
    blocks = np.moveaxis(xi[index], 2, 0)  # (K, rows, tau + 1)
    blocks = blocks[np.isfinite(blocks).all(axis=(1, 2))]
    if not blocks.size:
        return np.arange(nodes.size)
    stacked = blocks.reshape(-1, tau + 1)
    # vh[-1] is the smallest right singular vector; a tall matrix needs no full U (at
    # n = 100 the full one took 90 % of the decode).
    _, _, vh = np.linalg.svd(stacked, full_matrices=stacked.shape[0] < stacked.shape[1])
    sigma = vh[-1].conj()
    vals = np.abs(np.polynomial.polynomial.polyval(1.0 / nodes, sigma))
    return np.argsort(vals, kind="stable")
