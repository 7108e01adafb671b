"""Locate the liars of the cyclic code from the projected payloads (errors and erasures).

References
----------
.. [Bla03] R. E. Blahut, *Algebraic Codes for Data Transmission*, Cambridge University
   Press 2003, ch. 6 (Reed-Solomon codes, the Peterson-Gorenstein-Zierler locator, Chien
   search) and section 7.4 (decoding errors and erasures; Forney's modified syndromes).
.. [For65] G. D. Forney, "On decoding BCH codes", IEEE Trans. Inf. Theory 11(4), 1965.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from draco.core.decoder_types import CyclicDecoderConfig
from draco.core.projection import Projections
from draco.core.weights import node_powers

__all__ = ["Location", "locate_cyclic"]

#: A locator candidate whose kept rows fit within this many noise units ends the search
#: (``locate_cyclic`` step 4): honest rows fit within about 0.6 whitened units (the noise
#: bound is about sqrt(3) above the rounding's actual spread). A candidate above it is
#: refined by swaps (step 4b): a near-miss that keeps some liars (their lies absorbed by
#: an ill-conditioned cluster of suspects) fits worse than the true set.
_SETTLED = 1.0
#: A candidate this many times past config.factor is not brought back by swapping one row at
#: a time (``locate_cyclic`` step 5b): the lie kept in it is far outside the noise.
_HOPELESS = 1e3
#: Sets kept per size in the last-resort forward selection (``locate_cyclic`` step 4c).
_BEAM = 16


@dataclass(frozen=True)
class Location:
    liars: frozenset[int]  # rows shown to lie beyond the noise level (reported)
    excluded: frozenset[int]  # rows left out of the recovery (liars + unclearable suspects)
    residual: float  # normalised consistency residual of the kept rows (<= factor: consistent)
    within_budget: bool  # |excluded| <= floor((2s - |erasures|) / 2) (the safe bound)


@dataclass(frozen=True)
class _Fit:
    """Least-squares fit of the code to the kept rows (``_fit_outside``)."""

    residual: float  # normalised: O(1) when the kept rows are consistent
    score: np.ndarray  # (m,) worst-lane |deviation| / std of every clean row, in noise units
    sharp: np.ndarray  # (m,) bool: the row's codeword value is pinned down (std small)
    evidence: np.ndarray  # (m,) suspects: worst-lane |deviation| / (own noise + prediction's)
    deviation: np.ndarray  # (m,) suspects: worst-lane |z_j - c_j| (units of nu)


def _fit_outside(
    g: np.ndarray,
    zs: np.ndarray,
    g_known: np.ndarray,
    suspects: Sequence[int],
    nu: float,
    sharp_level: float,
    own: np.ndarray,
) -> _Fit:
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
    return _Fit(residual, score, sharp, evidence, deviation)


def _pgz_ranking(
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


def locate_cyclic(
    nodes: np.ndarray,
    s: int,
    proj: Projections,
    erasures: frozenset[int],
    config: CyclicDecoderConfig,
) -> Location:
    """Locate the liars from the projected payloads (Reed-Solomon errors and erasures).

    Parameters
    ----------
    nodes : ndarray, shape (n,), complex128
        x_j, the DFT node of worker j (all n-th roots of unity, in the code's stride order).
    s : int
    proj : Projections
        Finite projections of the usable payloads (keys = usable workers) and their energies.
    erasures : frozenset of int
        Known bad positions (missing or unusable payloads).
    config : CyclicDecoderConfig

    Steps [Bla03, ch. 6 and 7.4; For65]
    -----------------------------------
    1. Whiten: row j's lane l has rounding noise sigma_jl <= config.unit x
       sqrt(energy_jl / 3) (``Projections``); lane l is divided by its scale, the
       (tau0+1)-th largest sigma_jl, tau0 = floor((2s - e0) / 2) for the e0 erasures (within
       the budget at most tau0 liars can inflate their own bound: the scale is at least the
       largest honest one when they do, and an honest row's whenever they do not). Every
       lane then has honest noise of standard deviation <= 1 (nu = 1), whatever the lie's
       shape: a lane that holds only rounding stays O(1), a lane that holds a lie is large.
       Rows with |z_j| > config.huge x (the (s+1)-th largest |z|) are set aside (they would
       swamp the float64 syndromes); together with the erasures they are the e known bad
       rows. tau = floor((2s - e) / 2) more rows may be liars.
    2. Candidate suspect sets of size <= tau (the most that keeps the decoded codeword
       unique, see step 5):
       a. the tau rows ranked first by the PGZ error locator (``_pgz_ranking``: syndromes,
          Forney's modified syndromes, Chien search) - exact without noise, but its noise
          sensitivity grows like the SQUARE of the liars' Vandermonde condition number
          (e.g. 15 liars adjacent on the circle of n = 38 nodes sending identical
          payloads defeat it with complex64 rounding);
       b. backward: the 2s - e rows ranked first by the PGZ locator, then repeatedly put
          back the half of the excess that agrees best with the codeword fitted without
          them (``_fit_outside``), down to tau rows;
       c. greedy: start from no suspect, repeatedly add the kept row with the largest
          standardised misfit until the kept rows are consistent;
       d. peel: the tau rows of a treated as erasures, PGZ again for the
          floor((2s - e - tau) / 2) liars that budget leaves, then b's put-back down to tau
          rows (liars next to a long erased arc, |Gamma| ~ 1e-11, are swamped in the first
          syndromes by the visible liars: n = 123, s = 42, 42 adjacent erasures + 21
          liars, a held 17 of them and no refinement found the rest); then the same with
          as many rounds as the budget allows (n = 127, s = 48, 48 adjacent erasures +
          24 liars, 7 of them at the arc's ends: 17, 23, 24 found after 1, 2, 3 rounds);
       e. only if a-d give no consistent candidate: every arc of tau nodes consecutive on
          the circle (liars adjacent on the circle are the ill-conditioned case), the most
          consistent one.
       Before all of them: no suspect at all, if every row fits within _SETTLED (most
       rounds; the decode then depends on the payloads only).
    3. Refine each candidate by concentration steps (as in least trimmed squares): refit
       without the suspects, take as new suspects the rows with the largest standardised
       misfit, while the residual falls and the set changes. If that ends inconsistent,
       carry on from the candidate regardless of the residual, keeping the best set seen,
       and when the sets repeat take a wide step: refit without the 2s - e worst rows
       (the code through the n - 2s best rows only) and take the worst rows against that
       fit (with many erasures the liars next to the erased arc are nearly invisible to
       PGZ and to an ordinary step, e.g. n = 90, s = 39, 40 adjacent erasures + 19 liars).
       Each fit uses a Householder QR of the excluded rows' parity columns, so its
       residual is backward stable whatever their clustering: its sensitivity is that of
       one Vandermonde matrix, not of its square.
    4. Take the refined candidate with the smallest residual (stop at the first one whose
       residual is <= _SETTLED noise units). Above _SETTLED: b. swaps of one suspect for a
       neighbour on the circle or a badly fitting row while the residual falls; above
       config.factor: c. forward selection by the residual itself (a beam of _BEAM sets)
       over the rows every other step pointed at. Accept if the kept rows are consistent
       (residual <= config.factor). Safety: with e known bad rows, t <= tau liars and
       b <= tau excluded suspects, the kept rows are consistent with the true codeword on
       >= n - e - b - t >= n - 2s rows, which determine a codeword of degree < n - 2s:
       the decoded codeword is the true one, up to lies within the tolerance.
    5. Naming: a suspect's evidence is its deviation from the codeword predicted by the
       kept rows over its own noise bound plus the prediction's (worst lane). It is named
       a liar when the evidence exceeds config.clear_factor AND the lie is gross (as large
       as a typical honest projection) or certain (``certainly_lies``: no fit keeps the row
       even with its tau nearest kept rows left out instead, nor does a local search that
       keeps it). Why not the evidence alone: a fit that keeps liars on nearly dependent
       (clustered) nodes absorbs their lies and pushes them, amplified, onto the honest
       suspects next to them. A suspect not named goes back into the recovery if its
       prediction is sharp (std <= config.power x typical |z|) and the kept rows stay
       consistent; otherwise it stays out of the sum, unnamed.
    6. No candidate consistent: report failure (the caller raises DecodeError).
    """
    # Step 1.
    rows = _whiten(nodes, s, proj, erasures, config)
    if isinstance(rows, Location):
        return rows
    search = _Search(rows, config)
    chosen = search.search(rounds=4 * rows.tau + 8)
    if chosen[1].residual > config.factor:
        return Location(frozenset(rows.aside), frozenset(rows.aside), chosen[1].residual, False)
    # Step 5.
    return search.name(*chosen)


@dataclass(frozen=True)
class _Rows:
    """The whitened projections the search works on (step 1 of ``locate_cyclic``)."""

    nodes: np.ndarray  # (n,) all nodes of the code
    s: int
    clean: list[int]  # workers whose rows the search may keep or leave out
    zs: np.ndarray  # (m, L) their whitened projections
    own: np.ndarray  # (m, L) each row's own noise bound, in lane units
    known: list[int]  # erased + set-aside workers
    aside: list[int]  # set aside as huge (named liars)
    level: float  # typical honest |z| (whitened)
    tau: int  # floor((2s - |known|) / 2): how many more rows may lie


def _whiten(
    nodes: np.ndarray,
    s: int,
    proj: Projections,
    erasures: frozenset[int],
    config: CyclicDecoderConfig,
) -> _Rows | Location:
    """Step 1 of ``locate_cyclic``: whiten the lanes, set aside huge rows; or the result
    right away (too many bad rows; s = 0)."""
    usable = sorted(proj.z)
    zs_all = np.array([proj.z[j] for j in usable])  # (m, L)
    energies = np.array([proj.energy[j] for j in usable])
    sigma = config.unit * proj.arithmetic * np.sqrt(energies / 3.0)
    # Within the budget at most tau = floor((2s - e) / 2) of the usable rows lie: the
    # (tau+1)-th largest bound is then at least the largest honest one whenever the liars
    # inflate theirs (with heavy erasures few rows are left and the (s+1)-th would be the
    # smallest, below most honest rows' noise when a lane holds few coordinates).
    lane = _lane_scale(sigma, max(0, (2 * s - len(erasures)) // 2))
    zs_all = zs_all / lane
    own_all = sigma / lane  # each row's own noise bound in lane units (naming, step 5)
    level = _level(dict(enumerate(zs_all)))
    size = np.linalg.norm(np.abs(zs_all), axis=1)
    order = np.argsort(-size, kind="stable")
    ref = size[order[min(s, len(usable) - 1)]]
    aside = [usable[i] for i in order[:s] if size[i] > config.huge * max(ref, 1e-300)]
    known = sorted(erasures) + aside
    if len(known) > 2 * s:
        return Location(frozenset(aside), frozenset(aside), np.inf, False)
    if s == 0:  # no parity check: nothing to locate, nothing to verify (no erasures here)
        return Location(frozenset(), frozenset(), 0.0, True)
    aside_set = set(aside)
    clean_idx = [i for i, j in enumerate(usable) if j not in aside_set]
    shape = (len(clean_idx), zs_all.shape[1])
    return _Rows(
        nodes=nodes,
        s=s,
        clean=[usable[i] for i in clean_idx],
        zs=zs_all[clean_idx].reshape(shape),
        own=own_all[clean_idx].reshape(shape),
        known=known,
        aside=aside,
        level=level,
        tau=(2 * s - len(known)) // 2,
    )


_Candidate = tuple[list[int], _Fit]


class _Search:
    """Steps 2-5 of ``locate_cyclic`` over whitened rows. Suspects are indices into
    ``rows.clean``; ``kept_forced`` holds rows a search may not leave out (step 5)."""

    def __init__(self, rows: _Rows, config: CyclicDecoderConfig) -> None:
        self.rows = rows
        self.config = config
        self.nodes = rows.nodes
        self.s = rows.s
        self.tau = rows.tau
        self.clean = rows.clean
        self.known = rows.known
        self.m = len(rows.clean)
        parity = node_powers(rows.nodes, np.arange(1, 2 * rows.s + 1))  # (2s, n)
        self.g = parity[:, rows.clean]
        self.g_known = parity[:, rows.known]
        self.sharp_level = config.power * rows.level
        # Suspects that leave exactly n - 2s rows.
        self.wide = min(2 * rows.s - len(rows.known), self.m)
        circle = np.mod(
            np.round(-np.angle(rows.nodes) * rows.nodes.size / (2 * np.pi)), rows.nodes.size
        )
        self.where = circle[rows.clean].astype(int)  # each clean row's place on the circle
        self.kept_forced: set[int] = set()
        self.fits = 0  # fits so far (``name`` bounds its share: config.naming_fits)

    def fit(self, sus: Sequence[int]) -> _Fit:
        self.fits += 1
        f = _fit_outside(
            self.g, self.rows.zs, self.g_known, sus, 1.0, self.sharp_level, self.rows.own
        )
        if self.kept_forced:
            f.score[list(self.kept_forced)] = -np.inf  # never proposed as a suspect
        return f

    @staticmethod
    def top(score: np.ndarray, count: int) -> list[int]:
        return [int(i) for i in np.argsort(-score, kind="stable")[:count]]

    def concentrate(self, sus: list[int]) -> _Candidate:
        # Step 3: each step lowers the trimmed misfit; stop when the set repeats.
        seen: set[tuple[int, ...]] = set()
        f = self.fit(sus)
        start = (sus, f)
        while tuple(sorted(sus)) not in seen and len(seen) < 4 * self.tau + 8:
            seen.add(tuple(sorted(sus)))
            nxt = self.top(f.score, len(sus))
            if set(nxt) == set(sus):
                break
            f2 = self.fit(nxt)
            if f2.residual >= f.residual:
                break
            sus, f = nxt, f2
        if f.residual <= self.config.factor:
            return sus, f
        return min((sus, f), self.persist(*start), key=lambda c: c[1].residual)

    def persist(self, sus: list[int], f: _Fit) -> _Candidate:
        # Step 3b, only when step 3 ends inconsistent: carry on even when a step does not
        # lower the residual (one liar left among the kept rows dominates it however many
        # others were removed, yet the next step may reach it), keep the best set seen;
        # when the sets cycle, a wide step: fit without the ``wide`` worst rows (the code
        # through the n - 2s best rows) and take the worst rows against that fit.
        seen: set[tuple[int, ...]] = set()
        best = (sus, f)
        while len(seen) < 4 * self.tau + 8 and f.residual > self.config.factor:
            seen.add(tuple(sorted(sus)))
            nxt = self.top(f.score, len(sus))
            if tuple(sorted(nxt)) in seen and self.wide > len(sus):
                nxt = self.top(self.fit(self.top(f.score, self.wide)).score, len(sus))
            if tuple(sorted(nxt)) in seen:
                break
            sus, f = nxt, self.fit(nxt)
            if f.residual < best[1].residual:
                best = (sus, f)
        return best

    def greedy(self) -> list[int]:
        sus: list[int] = []
        f = self.fit(sus)
        while f.residual > self.config.factor and len(sus) < self.tau:
            cand = np.argsort(-f.score, kind="stable")
            sus.append(next(int(i) for i in cand if int(i) not in sus))
            f = self.fit(sus)
        return sus

    def backward(self, sus: list[int]) -> list[int]:
        # Put back the suspects that agree best with the codeword fitted without them.
        while len(sus) > self.tau:
            f = self.fit(sus)
            drop = max(1, (len(sus) - self.tau) // 2)
            keep = np.argsort(-f.score[sus], kind="stable")[: len(sus) - drop]
            sus = [sus[int(i)] for i in keep]
        return sus

    def ranking(self, rest: list[int], erased: list[int], count: int) -> list[int]:
        # The PGZ ranking of the rows ``rest`` (indices into clean) with ``erased`` (nodes
        # of rows left out) as erasures; rows forced in are never proposed.
        order = _pgz_ranking(
            self.nodes[[self.clean[i] for i in rest]],
            self.g[:, rest],
            self.rows.zs[rest],
            self.nodes[erased],
            self.s,
            count,
        )
        return [rest[int(i)] for i in order if rest[int(i)] not in self.kept_forced]

    def peel(self, sus: list[int], rounds: int) -> list[int]:
        # Treat the suspects as erasures and locate again with the budget they leave
        # (liars next to a long erased arc are swamped in the first syndromes by the
        # visible ones), up to ``rounds`` times, then put back down to tau rows (backward).
        for _ in range(rounds):
            taken = set(sus)
            rest = [i for i in range(self.m) if i not in taken]
            more = (2 * self.s - len(self.known) - len(sus)) // 2
            if more <= 0 or not rest:
                break
            sus = sus + self.ranking(rest, self.known + [self.clean[i] for i in sus], more)[:more]
        return self.backward(sus)

    def swaps(
        self,
        sus: list[int],
        f: _Fit,
        rounds: int,
        rows: Sequence[int] | None = None,
        stop_at: int | None = None,
    ) -> _Candidate:
        # Step 4b: swap one suspect for a kept row next to a suspect on the circle (or
        # among the worst-fitting kept rows) while that lowers the residual. With ``rows``:
        # only suspects among ``rows`` for kept rows among ``rows`` (a local search). With
        # ``stop_at``: return the best set so far once ``self.fits`` reaches it.
        for _ in range(rounds):
            pool = self._swap_pool(sus, f) if rows is None else [i for i in rows if i not in sus]
            best = (sus, f)
            for a in range(len(sus)):
                if rows is not None and sus[a] not in rows:
                    continue
                for b in pool:
                    if stop_at is not None and self.fits >= stop_at:
                        return best
                    trial = [*sus[:a], b, *sus[a + 1 :]]
                    ft = self.fit(trial)
                    if ft.residual < best[1].residual:
                        best = (trial, ft)
            if best[0] is sus:
                break
            sus, f = best
            if f.residual <= _SETTLED:
                break
        return sus, f

    def _swap_pool(self, sus: list[int], f: _Fit) -> list[int]:
        """Kept rows within 2 places of a suspect on the circle, then the worst-fitting."""
        n_nodes = self.nodes.size
        near = {int((self.where[i] + d) % n_nodes) for i in sus for d in (-2, -1, 1, 2)}
        pool = [
            i
            for i in range(self.m)
            if i not in sus and i not in self.kept_forced and int(self.where[i]) in near
        ]
        pool += [i for i in self.top(f.score, 2 * self.tau) if i not in sus and i not in pool]
        return pool

    def search(self, rounds: int) -> _Candidate:
        # Steps 2-4: the most consistent candidate of size <= tau that keeps kept_forced.
        # No suspect at all when every row fits (most rounds): the decode then depends on
        # the payloads only, not on the secret projection (reproducible bit for bit).
        nobody: _Candidate = ([], self.fit([]))
        if nobody[1].residual <= _SETTLED:
            return nobody
        tau, factor = self.tau, self.config.factor
        # Step 4: the most consistent refined candidate; stop early at one within the noise.
        chosen: _Candidate | None = None
        for start in self._starts():
            cand = self.concentrate(start())
            if chosen is None or cand[1].residual < chosen[1].residual:
                chosen = cand
            if chosen[1].residual <= _SETTLED:
                break
        assert chosen is not None
        if chosen[1].residual > factor and 0 < tau < self.m:
            arc = self._best_arc()
            if arc is not None and arc[1].residual < chosen[1].residual:
                chosen = arc
        if chosen[1].residual > _SETTLED and 0 < tau < self.m:
            chosen = self.swaps(*chosen, rounds)
        if chosen[1].residual > factor and 0 < tau < self.m:
            chosen = min(chosen, self.beam(chosen[0]), key=lambda c: c[1].residual)
        return chosen

    def _starts(self) -> list[Callable[[], list[int]]]:
        """Step 2 a-d: the candidate suspect sets, cheapest first."""
        tau, wide = self.tau, self.wide
        starts: list[Callable[[], list[int]]] = []
        if tau > 0 and self.clean:
            ranked = self.ranking(list(range(self.m)), list(self.known), tau)
            starts.append(lambda: ranked[:tau])
            if wide > tau:
                starts.append(lambda: self.backward(ranked[:wide]))
            starts.append(self.greedy)
            if wide > tau:
                starts.append(lambda: self.peel(ranked[:tau], 1))
                starts.append(lambda: self.peel(ranked[:tau], tau))
        if not starts:
            starts.append(list)
        return starts

    def _best_arc(self) -> _Candidate | None:
        """Step 2e. Liars adjacent on the circle are the ill-conditioned case for every
        locator above; try every arc of tau consecutive nodes as the suspect set."""
        by_angle = np.argsort(self.where, kind="stable")
        m, tau = self.m, self.tau
        arcs = [[int(by_angle[(a + i) % m]) for i in range(tau)] for a in range(m)]
        arcs = [arc for arc in arcs if not self.kept_forced.intersection(arc)]
        if not arcs:
            return None
        return self.concentrate(min(arcs, key=lambda a: self.fit(a).residual))

    def beam(self, seed: list[int]) -> _Candidate:
        # Step 4c, the last resort: forward selection by the residual itself (not by the
        # misfit scores, which a contaminated fit spreads over honest rows), keeping the
        # _BEAM best sets, over a pool of the rows every other step pointed at.
        tau = self.tau
        f0 = self.fit([])
        pool = set(seed) | set(self.top(f0.score, 2 * tau))
        pool |= set(self.ranking(list(range(self.m)), list(self.known), tau)[: 2 * tau])
        pool |= {int(i) for i in self.top(self.fit(seed).score, 2 * tau)}
        pool -= self.kept_forced
        layer: list[_Candidate] = [([], f0)]
        best = layer[0]
        for _ in range(tau):
            grown: dict[tuple[int, ...], _Candidate] = {}
            for sus, _f in layer:
                for i in pool - set(sus):
                    key = tuple(sorted([*sus, i]))
                    if key not in grown:
                        grown[key] = (list(key), self.fit(list(key)))
            layer = sorted(grown.values(), key=lambda c: c[1].residual)[:_BEAM]
            if not layer:
                break
            if layer[0][1].residual < best[1].residual:
                best = layer[0]
            if best[1].residual <= _SETTLED:
                break
        return best

    def certainly_lies(self, sus: list[int], i: int, stop_at: int) -> bool:
        # Step 5: suspect i is named only if no candidate that keeps it is consistent.
        # Naming is bounded: once ``self.fits`` reaches ``stop_at`` the proof is left
        # unfinished and the suspect is not named (False), never named without proof.
        # The rows whose lies an ill-conditioned fit can absorb and push onto an honest
        # suspect are its neighbours on the circle (a codeword within the noise on the kept
        # rows can be 1e8 times larger at a node inside a gap of 2s adjacent nodes, n = 45,
        # s = 5). a. Quick proof: the code cannot fit row i even with its tau nearest kept
        # rows left out as well. b. Else a local search with row i kept: the suspects but i
        # plus one of its 2 tau nearest kept rows, then swaps.
        tau, factor, n_nodes = self.tau, self.config.factor, self.nodes.size
        gap = np.abs(((self.where - self.where[i]) + n_nodes / 2) % n_nodes - n_nodes / 2)
        near = [int(k) for k in np.argsort(gap, kind="stable") if k != i and k not in sus]
        others = [k for k in sus if k != i]
        if self.fits >= stop_at:
            return False
        if self.fit(others + near[:tau]).residual > factor:
            return True
        self.kept_forced.add(i)
        try:
            local = near[: 2 * tau]
            trials = [[*others, k] for k in local] if len(sus) == tau else [others]
            if self.fits + len(trials) > stop_at:
                return False
            best = min(((t, self.fit(t)) for t in trials), key=lambda c: c[1].residual)
            if best[1].residual > _HOPELESS * factor:
                return True
            # The region: the local kept rows and the suspects among them on the circle.
            reach = max(float(gap[k]) for k in local) if local else 0.0
            region = local + [k for k in others if gap[k] <= reach]
            local_best = self.swaps(*best, rounds=2, rows=region, stop_at=stop_at)
            return self.fits < stop_at and local_best[1].residual > factor
        finally:
            self.kept_forced.discard(i)

    def name(self, sus: list[int], f: _Fit) -> Location:
        """Step 5: name the liars among the suspects; put back the sharp unnamed ones."""
        # A gross lie (a deviation as large as a typical honest projection) is named at once;
        # a subtler one only once the search that keeps it fails (``certainly_lies``), within
        # config.naming_fits fits for all suspects together, strongest evidence first: the
        # proofs cost O(tau^2) fits each, and liars choose how subtle they are (tiny lies
        # from tau adjacent liars made one decode take 475 s at n = 100, s = 35). A suspect
        # left unproven is not named; it stays out of the sum unless put back below.
        stop_at = self.fits + self.config.naming_fits
        liars = [
            i
            for i in sorted(sus, key=lambda k: -float(f.evidence[k]))
            if f.evidence[i] > self.config.clear_factor
            and (f.deviation[i] >= self.rows.level or self.certainly_lies(sus, i, stop_at))
        ]
        back = [i for i in sus if i not in liars and f.sharp[i]]
        excluded = [i for i in sus if i not in back]
        if back:
            f2 = self.fit(excluded)
            if f2.residual <= self.config.factor:
                f = f2
            else:
                excluded = list(sus)
        # Every set-aside row is named: it exceeds every honest row by config.huge.
        aside = frozenset(self.rows.aside)
        return Location(
            aside | frozenset(self.clean[i] for i in liars),
            aside | frozenset(self.clean[i] for i in excluded),
            f.residual,
            len(excluded) <= self.tau,
        )


def _lane_scale(sigma: np.ndarray, s: int) -> np.ndarray:
    """Per-lane noise scale (L,) from the rows' noise bounds sigma (m, L): the (s+1)-th
    largest of each lane (liars may inflate their own bound, at most s of them), floored
    at 1e-12 x the largest lane scale (a lane no honest coordinate reaches is exactly zero
    in every honest row; any lie in it is then very large, never a division by zero)."""
    m = sigma.shape[0]
    lane = -np.sort(-sigma, axis=0)[min(s, m - 1)]
    peak = float(np.max(lane)) if lane.size else 0.0
    floor = peak * 1e-12 if peak > 0 else 1e-300
    out: np.ndarray = np.maximum(lane, floor)
    return out


def _level(z: Mapping[int, np.ndarray]) -> float:
    """Median over rows of the rms projection magnitude (honest rows are the majority)."""
    zs = np.array(list(z.values()))
    return float(np.median(np.sqrt(np.mean(np.abs(zs) ** 2, axis=1))))
