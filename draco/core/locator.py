"""Locate the liars of the cyclic code from the projected payloads (errors and erasures).

``locate_cyclic`` is the entry point and step 1 (whitening the projections); the search
over suspect sets (steps 2-5) is ``draco.core.locator_search``, and the linear algebra it
judges them by (the code fitted outside a suspect set, the PGZ ranking) is
``draco.core.locator_fit``. ``_SETTLED``, ``_HOPELESS`` and ``_BEAM`` below are the
search's constants (``draco.core.locator_search``).

References
----------
.. [Bla03] R. E. Blahut, *Algebraic Codes for Data Transmission*, Cambridge University
   Press 2003, ch. 6 (Reed-Solomon codes, the Peterson-Gorenstein-Zierler locator, Chien
   search) and section 7.4 (decoding errors and erasures; Forney's modified syndromes).
.. [For65] G. D. Forney, "On decoding BCH codes", IEEE Trans. Inf. Theory 11(4), 1965.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from draco.core.decoder_types import CyclicDecoderConfig
from draco.core.locator_search import Location, Rows, Search
from draco.core.projection import Projections

__all__ = ["Location", "locate_cyclic"]


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
       a. the tau rows ranked first by the PGZ error locator (``pgz_ranking``: syndromes,
          Forney's modified syndromes, Chien search) - exact without noise, but its noise
          sensitivity grows like the SQUARE of the liars' Vandermonde condition number
          (e.g. 15 liars adjacent on the circle of n = 38 nodes sending identical
          payloads defeat it with complex64 rounding);
       b. backward: the 2s - e rows ranked first by the PGZ locator, then repeatedly put
          back the half of the excess that agrees best with the codeword fitted without
          them (``fit_outside``), down to tau rows;
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
    search = Search(rows, config)
    chosen = search.search(rounds=4 * rows.tau + 8)
    if chosen[1].residual > config.factor:
        return Location(frozenset(rows.aside), frozenset(rows.aside), chosen[1].residual, False)
    # Step 5.
    return search.name(*chosen)


def _whiten(
    nodes: np.ndarray,
    s: int,
    proj: Projections,
    erasures: frozenset[int],
    config: CyclicDecoderConfig,
) -> Rows | Location:
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
    return Rows(
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
