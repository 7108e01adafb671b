"""Decoders of the DRACO codes: exact majority vote and the cyclic (DFT) syndrome decoder.

Both decoders return the SUM over all partitions of the partition gradients, name the workers
located as lying, and raise :class:`draco.errors.DecodeError` instead of returning a sum they
cannot vouch for. The codes themselves (assignment, encoding) live in ``draco.core.codes``.

References
----------
.. [CWCP18] L. Chen, H. Wang, Z. Charles, D. Papailiopoulos, "DRACO: Byzantine-resilient
   Distributed Training via Redundant Gradients", ICML 2018, sections 4-5.
.. [Bla03] R. E. Blahut, *Algebraic Codes for Data Transmission*, Cambridge University
   Press 2003, ch. 6 (Reed-Solomon codes, the Peterson-Gorenstein-Zierler locator, Chien
   search) and section 7.4 (decoding errors and erasures; Forney's modified syndromes).
.. [For65] G. D. Forney, "On decoding BCH codes", IEEE Trans. Inf. Theory 11(4), 1965.
.. [Fre97] R. Freivalds' randomised check, in R. Motwani, P. Raghavan, *Randomized
   Algorithms*, section 7.1: a secret random projection detects a nonzero error with
   probability one.

Numerics and measured accuracy: ``docs/numerics.md`` (made by ``benchmarks/cyclic_numerics.py``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from draco.errors import DecodeError

__all__ = [
    "CyclicDecoderConfig",
    "DecodeResult",
    "bitwise_equal",
    "check_weights",
    "decode_cyclic",
    "decode_repetition",
    "extended_roots",
    "locate_cyclic",
    "node_powers",
    "project_rows",
    "recovery_weights",
    "repetition_ready",
    "roots_of_unity",
]


@dataclass(frozen=True)
class DecodeResult:
    """What a decoder hands back to the parameter server.

    Attributes
    ----------
    gradient : ndarray, shape (d,), float32
        The sum over ALL partitions of the partition gradients.
    adversaries : frozenset of int
        Workers located as lying (their payload was usable but wrong).
    erasures : frozenset of int
        Workers whose payload was missing or unusable (wrong shape or dtype, NaN/Inf).
    """

    gradient: np.ndarray
    adversaries: frozenset[int]
    erasures: frozenset[int]


# ---------------------------------------------------------------------------------------------
# Payload checks shared by both decoders
# ---------------------------------------------------------------------------------------------


def _well_formed(payload: object, dtype: np.dtype) -> np.ndarray | None:
    """The payload as a C-contiguous 1-D array of ``dtype``, or None if it is not one."""
    if not isinstance(payload, np.ndarray) or payload.ndim != 1 or payload.dtype != dtype:
        return None
    if payload.size == 0:
        return None
    return np.ascontiguousarray(payload)


# ---------------------------------------------------------------------------------------------
# Repetition code: majority vote per group
# ---------------------------------------------------------------------------------------------


def _load_memcmp() -> Callable[[int, int, int], int] | None:
    """The C library's ``memcmp`` through ctypes (standard library), or None if unavailable.

    Why: the exact vote compares whole payloads byte for byte. glibc's ``memcmp`` runs at
    memory bandwidth and stops at the first difference; ``np.array_equal`` writes and rescans
    a boolean temporary (about 1.5x slower, measured on the benchmark machine).
    """
    name = ctypes.util.find_library("c") or ctypes.util.find_library("msvcrt")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).memcmp
    except (OSError, AttributeError):  # pragma: no cover - exotic platforms
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return fn


_MEMCMP = _load_memcmp()


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """True iff two C-contiguous arrays have the same dtype, shape and bytes.

    NaN payloads compare equal to themselves here (it is a byte comparison, not ``==``).
    """
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.nbytes == 0:
        return True
    if _MEMCMP is not None:
        return _MEMCMP(a.ctypes.data, b.ctypes.data, a.nbytes) == 0
    return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))  # pragma: no cover


def _close(a: np.ndarray, b: np.ndarray, rtol: float) -> bool:
    """Tolerance vote's equality: max_i |a_i - b_i| <= rtol * max(||a||_inf, ||b||_inf)."""
    if a.shape != b.shape:
        return False
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    return bool(float(np.max(np.abs(a - b))) <= rtol * scale)


@dataclass(frozen=True)
class _GroupVote:
    winner: np.ndarray | None  # the agreed value (certainly honest), or None
    backers: frozenset[int]  # members whose payload equals (or is close to) the winner
    unusable: frozenset[int]  # missing, malformed or non-finite members


def _vote_group(
    members: Sequence[int],
    received: Mapping[int, np.ndarray],
    s: int,
    rtol: float | None,
) -> _GroupVote:
    """Majority vote inside one repetition group.

    Steps
    -----
    1. Drop members whose payload is missing or not a 1-D float32 array (erasures).
    2. Exact vote (``rtol`` None): take the first unclassified member as candidate, compare
       every other unclassified member with it byte for byte (early exit at the first
       difference); the members equal to it form its class. A class with >= s+1 members
       contains an honest worker, so its value IS the honest value [CWCP18, section 4.1]; stop.
       Otherwise discard the class and repeat. At most s+1 candidates are tried per group.
    3. Tolerance vote (``rtol`` > 0): for every member count the members within ``rtol``
       (see ``_close``); the member with most neighbours (lowest id on ties) is the winner if
       it has >= s+1 neighbours, counting itself. Its value is within ``rtol`` of an honest
       value (one of its >= s+1 neighbours is honest).
    4. A winning value containing NaN/Inf means the honest workers agree on a non-finite
       gradient; ``decode_repetition`` finds out from the sum (NaN/Inf propagate through
       it), which saves a pass over every winner.
    """
    # Step 1.
    usable: list[int] = []
    unusable: set[int] = set()
    arrays: dict[int, np.ndarray] = {}
    for j in members:
        arr = _well_formed(received.get(j), np.dtype(np.float32))
        if arr is None:
            unusable.add(j)
        else:
            usable.append(j)
            arrays[j] = arr
    if len(usable) < s + 1:
        return _GroupVote(None, frozenset(), frozenset(unusable))
    if rtol is None:
        # Step 2.
        pending = list(usable)
        while len(pending) >= s + 1:
            cand = pending[0]
            cls = [cand] + [m for m in pending[1:] if bitwise_equal(arrays[cand], arrays[m])]
            if len(cls) >= s + 1:
                return _GroupVote(arrays[cand], frozenset(cls), frozenset(unusable))
            pending = [m for m in pending if m not in cls]
        return _GroupVote(None, frozenset(), frozenset(unusable))
    # Step 3. Non-finite payloads are erasures before the tolerance vote (|inf - inf| = nan).
    finite = [j for j in usable if np.isfinite(arrays[j]).all()]
    unusable |= set(usable) - set(finite)
    neighbours = {
        j: [m for m in finite if m == j or _close(arrays[j], arrays[m], rtol)] for j in finite
    }
    best = max(finite, key=lambda j: (len(neighbours[j]), -j), default=None)
    if best is None or len(neighbours[best]) < s + 1:
        return _GroupVote(None, frozenset(), frozenset(unusable))
    return _GroupVote(arrays[best], frozenset(neighbours[best]), frozenset(unusable))


def repetition_ready(
    groups: Sequence[Sequence[int]],
    received: Mapping[int, np.ndarray],
    s: int,
    rtol: float | None = None,
) -> bool:
    """True once every group has a value backed by >= s+1 identical (or close) copies.

    Such a value is certainly honest, so ``decode_repetition`` will return the exact sum
    whatever the missing workers would send. Cost: a per-group count, then at most one byte
    comparison per received payload (exact vote).
    """
    for members in groups:
        if sum(1 for j in members if j in received) < s + 1:
            return False
    return all(_vote_group(members, received, s, rtol).winner is not None for members in groups)


def decode_repetition(
    groups: Sequence[Sequence[int]],
    received: Mapping[int, np.ndarray],
    s: int,
    rtol: float | None = None,
) -> DecodeResult:
    """Decode the repetition code: one majority vote per group, then the sum of the winners.

    Parameters
    ----------
    groups : sequence of sequences of int
        The groups' member worker ids (each group of size m >= 2s+1 holds m partitions).
    received : mapping int -> ndarray, shape (d,), float32
    s : int
        Number of adversaries the code tolerates.
    rtol : float or None
        None: exact (bitwise) vote. A float > 0: tolerance vote (see ``_vote_group``).

    Returns
    -------
    DecodeResult
        ``gradient`` = winner of group 0 + winner of group 1 + ... accumulated in float32 in
        group order (so it is bitwise the honest sum computed the same way).

    Raises
    ------
    DecodeError
        A group has no value with >= s+1 backers (more than s liars, or too many missing),
        or the groups' agreed values have different lengths.
    """
    winners: list[np.ndarray] = []
    adversaries: set[int] = set()
    erasures: set[int] = set()
    for g, members in enumerate(groups):
        vote = _vote_group(members, received, s, rtol)
        if vote.winner is None:
            got = sorted(set(members) - vote.unusable)
            raise DecodeError(
                f"repetition group {g} (workers {members[0]}..{members[-1]}) has no payload "
                f"backed by {s + 1} identical copies: usable payloads from {got}, unusable "
                f"or missing from {sorted(vote.unusable)}. Wait for more workers (raise the "
                f"round timeout) or run with more workers per group."
            )
        winners.append(vote.winner)
        erasures |= vote.unusable
        for j in set(members) - vote.backers - vote.unusable:
            p = received[j]
            # Wrong length or non-finite: unusable (an erasure), otherwise a located liar.
            if p.shape != vote.winner.shape or not np.isfinite(p).all():
                erasures.add(j)
            else:
                adversaries.add(j)
    shapes = {w.shape for w in winners}
    if len(shapes) != 1:
        raise DecodeError(
            f"repetition groups agree on payloads of different lengths {sorted(shapes)}: the "
            f"workers run different tasks (check that every worker has the same model)"
        )
    total = winners[0].copy()
    with np.errstate(over="ignore", invalid="ignore"):  # reported below
        for w in winners[1:]:
            total += w
    # Step 4 of ``_vote_group``, on the sum: it is finite iff every winner is (and no
    # overflow), so the winners are only re-read when something is wrong.
    if not np.isfinite(total).all():
        bad = [g for g, w in enumerate(winners) if not np.isfinite(w).all()]
        if bad:
            raise DecodeError(
                f"repetition groups {bad} agree on a gradient containing NaN or Inf (at least "
                f"{s + 1} identical copies each, so honest workers sent it): the model has "
                f"diverged; lower the learning rate or restart from a checkpoint."
            )
        raise DecodeError("the sum of the groups' gradients overflows float32")
    return DecodeResult(total, frozenset(adversaries), frozenset(erasures))


# ---------------------------------------------------------------------------------------------
# Cyclic code: secret projection, errors-and-erasures location, least-squares recovery
# ---------------------------------------------------------------------------------------------

#: Coordinates per float32 partial dot product in ``project_rows``; partials are summed in
#: float64. Bounds the float32 accumulation error (measured ~2e-6 relative at 2**15).
_PROJECTION_CHUNK = 1 << 16
#: Number of secret projections per decode (coordinates i = k mod K go to projection k).
PROJECTIONS = 8
#: Coordinates per block of the recovery pass (``_recover``): 40 complex64 rows of a block
#: take 5 MB, staged once and read back from cache by the gemv. Measured at n = 45,
#: d = 1,033,510 (whole pass): 4096: 24.6 ms, 8192: 21.2, 16384: 19.3, 32768: 24.3.
_RECOVERY_BLOCK = 1 << 14
#: Payloads with at least this many projection blocks are located on a secret random sample
#: of 1 / _SAMPLE_FRACTION of the blocks; the recovery pass then verifies the kept rows on all
#: coordinates (``decode_cyclic``).
_SAMPLE_MIN_BLOCKS = 8
_SAMPLE_FRACTION = 8
#: Bound on (rows summed in the payload precision before each float64 accumulation) x
#: (recovery amplification) in ``_recover``. Payload rounding dominates the error: with s
#: liars adjacent on the circle, d = 131072, complex64, relative error of the sum for
#: budgets 16 / 256 / unbounded: n=45, s=5 (amplification 3.3): 5.7e-8 / 7.8e-8 / 7.8e-8;
#: n=57, s=20 (18): 1.3e-7 / 1.7e-7 / 1.7e-7. 256 keeps n = 45 in one gemv per block.
_GROUP_BUDGET = 256.0
#: A locator candidate whose kept rows fit within this many noise units ends the search
#: (``locate_cyclic`` step 4; any candidate within config.factor = 50 is safe). Honest rows
#: fit within 9 units in the measured sweep (complex128, n = 110); 1.0 sent most large-n
#: decodes through every candidate search (0.75 s instead of 0.02 s at n = 110).
_SETTLED = 10.0


@dataclass(frozen=True)
class CyclicDecoderConfig:
    """Tolerances of the cyclic decoder.

    Attributes
    ----------
    noise_floor, noise_growth : float
        Relative noise of a projected honest payload, modelled as
        noise_floor + noise_growth * sqrt(L) with L = min(ceil(d / K), chunk rows): payload
        rounding plus the float32 accumulation inside one projection block. Calibrated on
        honest payloads (docs/numerics.md): complex64 measured 8e-8 (d = 5) to 4.3e-6
        (d = 3e5); the model gives 2.2e-7 to 2.8e-6 and ``factor`` covers the rest.
    factor : float
        Kept rows are consistent while their normalised residual is <= ``factor`` noise units.
    clear_factor : float
        A suspect is named a liar when its projection deviates from the codeword predicted
        by the kept rows by more than ``clear_factor`` standard deviations (prediction noise
        plus its own; the noise unit is rescaled by the kept rows' measured residual, never
        below 1/5 of the model). Otherwise it is not named.
    power : float
        A suspect that is not named goes back into the recovery only if its prediction is
        sharp (std <= ``power`` x the typical honest |z|) and the kept rows stay consistent;
        otherwise it stays out of the sum (a lie up to the prediction's noise could hide
        in it).
    huge : float
        A projection more than ``huge`` x the (s+1)-th largest one is set aside before the
        locator runs (it would swamp the syndromes in float64); it is named a liar.
    min_scale : float
        The noise unit of step 5 of ``locate_cyclic`` follows the kept rows' measured
        residual down to this fraction of the model, no lower. 0.2 for complex64 (the
        model's float32 accumulation term is pessimistic at large d); 1.0 for complex128,
        whose model (1e-15) is already within a few float64 roundings of the fit's own
        arithmetic: with exactly rounded rows the residual measured 0.25 units while an
        honest suspect's prediction was off by 2 (n = 23, s = 8), and 0.2 named it.
    rounding : float
        Relative error of the decoded sum per unit of recovery amplification
        sqrt(n) ||w||_2 (payload rounding): 2.2e-8 for complex64, the largest measured
        over the sweep of docs/numerics.md (2s adjacent erasures, n <= 128); 3e-17 for
        complex128.
    max_error : float
        The decoder refuses (DecodeError) a sum whose expected relative error,
        rounding x amplification, exceeds this: the missing and lying workers sit so close
        together on the circle that the other rows cannot pin the sum down in the payload
        precision. ``payload_dtype="auto"`` picks complex128 wherever some pattern inside
        the budget would hit this (``COMPLEX64_MAX_ERASURE_AMPLIFICATION``).
    """

    noise_floor: float = 2e-7
    noise_growth: float = 2e-8
    factor: float = 50.0
    clear_factor: float = 5.0
    power: float = 1e-3
    huge: float = 1e6
    min_scale: float = 0.2
    rounding: float = 2.2e-8
    max_error: float = 1e-5

    def relative_noise(self, d: int) -> float:
        """The relative noise level of a projection of d-coordinate payloads."""
        rows = min(-(-d // PROJECTIONS), max(1, _PROJECTION_CHUNK // PROJECTIONS))
        return self.noise_floor + self.noise_growth * float(np.sqrt(rows))


def project_rows(
    rows: Mapping[int, np.ndarray],
    d: int,
    rng: np.random.Generator,
    blocks: Sequence[int] | None = None,
) -> dict[int, np.ndarray]:
    """Project each payload on K = ``PROJECTIONS`` secret random vectors in one pass.

    Projection k sees the coordinates i = k (mod K): z_{j,k} = sum_m r_m y_{j, mK+k}, with
    r_m uniform in [-1, 1) (and extra weights for the d mod K trailing coordinates). Each
    z_{j,k} is complex-linear in y_j, so the projected payloads of every k form a codeword
    of the same Reed-Solomon code plus the projected errors [CWCP18, section 5]. A nonzero
    error changes some projection with probability one [Fre97]; r is drawn here, after the
    payloads arrived, so a liar cannot aim at its null space. One pass: the payload viewed
    as a (d/K, 2K) float matrix times r (a gemv), accumulated in float64 over blocks of
    ``_PROJECTION_CHUNK`` coordinates to bound float32 rounding. Several projections make the
    error locator far better determined than one (docs/numerics.md).

    Parameters
    ----------
    rows : mapping int -> ndarray, shape (d,), complex64 or complex128, C-contiguous
    d : int
    rng : numpy Generator
    blocks : sequence of int or None
        None: every coordinate. Otherwise only these blocks of ``_PROJECTION_CHUNK``
        coordinates (a secret random sample, see ``decode_cyclic``; the tail is skipped).

    Returns
    -------
    dict int -> ndarray, shape (K,), complex128
        Non-finite entries when the payload holds NaN/Inf (they propagate through the sums).
    """
    k = PROJECTIONS
    m = d // k
    head = m * k
    r = rng.random(m, dtype=np.float32)
    r *= 2
    r -= 1
    r_tail = rng.random(d - head) * 2 - 1
    step = max(1, _PROJECTION_CHUNK // k)
    starts = range(0, m, step) if blocks is None else [b * step for b in blocks]
    out: dict[int, np.ndarray] = {}
    for j, y in rows.items():
        real = y.view(np.float32 if y.dtype == np.complex64 else np.float64)
        acc = np.zeros(2 * k)
        if m:
            mat = real[: 2 * head].reshape(m, 2 * k)
            for start in starts:
                stop = min(m, start + step)
                acc += r[start:stop].astype(mat.dtype, copy=False) @ mat[start:stop]
        if blocks is not None:
            out[j] = acc[0::2] + 1j * acc[1::2]
            continue
        for t in range(d - head):
            acc[2 * t : 2 * t + 2] += r_tail[t] * real[2 * (head + t) : 2 * (head + t) + 2]
        out[j] = acc[0::2] + 1j * acc[1::2]
    return out


@dataclass(frozen=True)
class _Location:
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
    rms: float  # rms of the residual components in noise units (~1 if nu is exact)
    samples: int  # number of complex residual components behind ``rms``


def _fit_outside(
    g: np.ndarray,
    zs: np.ndarray,
    g_known: np.ndarray,
    suspects: Sequence[int],
    nu: float,
    sharp_level: float,
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
       noise plus its own.
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
        rms = float(np.linalg.norm(t) / (nu * np.sqrt(n * t.size)))
    else:
        residual, rms = 0.0, 1.0
    # Step 4.
    score = np.zeros(m)
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
        std = nu * (1.0 + np.sqrt(np.maximum(n * amp**2 - 1.0, 0.0)))
        score[sus] = np.max(np.abs(zs[sus] - c_x), axis=1) / std
        sharp[sus] = std <= sharp_level
    return _Fit(residual, score, sharp, rms, int(t.size))


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
    blocks = []
    for p in range(xi.shape[1]):
        # Newton's identities sum_k sigma_k Xi_{m-k} = 0, m = tau+1 .. 2s-eps (Xi_m = xi[m-1]).
        block = np.array(
            [[xi[mm - k - 1, p] for k in range(tau + 1)] for mm in range(tau + 1, 2 * s - eps + 1)]
        )
        norm = np.linalg.norm(block)
        if norm > 0 and np.isfinite(norm):
            blocks.append(block / norm)
    if not blocks:
        return np.arange(nodes.size)
    stacked = np.vstack(blocks)
    # vh[-1] is the smallest right singular vector; a tall matrix needs no full U (at
    # n = 100 the full one took 90 % of the decode).
    _, _, vh = np.linalg.svd(stacked, full_matrices=stacked.shape[0] < stacked.shape[1])
    sigma = vh[-1].conj()
    vals = np.abs(np.polynomial.polynomial.polyval(1.0 / nodes, sigma))
    return np.argsort(vals, kind="stable")


def locate_cyclic(
    nodes: np.ndarray,
    s: int,
    z: Mapping[int, np.ndarray],
    erasures: frozenset[int],
    config: CyclicDecoderConfig,
    noise: float,
) -> _Location:
    """Locate the liars from the projected payloads (Reed-Solomon errors and erasures).

    Parameters
    ----------
    nodes : ndarray, shape (n,), complex128
        x_j, the DFT node of worker j (all n-th roots of unity, in the code's stride order).
    s : int
    z : mapping int -> ndarray, shape (K,), complex128
        Finite projections of the usable payloads (keys = usable workers).
    erasures : frozenset of int
        Known bad positions (missing or unusable payloads).
    config : CyclicDecoderConfig
    noise : float
        Relative noise of a projection (``config.relative_noise(d)``).

    Steps [Bla03, ch. 6 and 7.4; For65]
    -----------------------------------
    1. Noise level nu = noise x median_j rms_k |z_jk| (robust: most rows are honest; honest
       rows have comparable magnitudes because every window is a rotation of the same one).
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
       residual is <= _SETTLED noise units: any consistent candidate decodes the true
       codeword, see step 5); accept it if its kept rows are consistent (residual <=
       config.factor noise units).
    5. Reporting and exclusion: a suspect is a liar when its projection deviates from the
       codeword predicted by the kept rows by more than config.clear_factor standard
       deviations (prediction noise + its own) in some lane. A suspect within the noise
       whose prediction is sharp (std <= config.power x typical |z|) is put back into the
       recovery if the kept rows stay consistent; one whose prediction is not sharp (a
       gap of adjacent liars) stays excluded but is not named. Safety: with e known bad
       rows, t <= tau liars and b <= tau excluded suspects, the kept rows are consistent
       with the true codeword on >= n - e - b - t >= n - 2s rows (even for one liar beyond
       the budget, 2t + e = 2s + 1), which determine a codeword of
       degree < n - 2s: the decoded codeword is the true one.
    6. No candidate consistent: report failure (the caller raises DecodeError).
    """
    usable = sorted(z)
    zs_all = np.array([z[j] for j in usable])  # (m, K)
    mags = np.abs(zs_all)
    # Step 1. One noise level for all lanes: a projection can be small by cancellation
    # while its rounding error is not (it scales with sum_i |r_i y_i|, i.e. the typical |z|).
    level = _level(z)
    nu = noise * level if level > 0 else 1e-300
    size = np.linalg.norm(mags, axis=1)
    order = np.argsort(-size, kind="stable")
    ref = size[order[min(s, len(usable) - 1)]]
    aside = [usable[i] for i in order[:s] if size[i] > config.huge * max(ref, 1e-300)]
    known = sorted(erasures) + aside
    eps = len(known)
    fail = _Location(frozenset(aside), frozenset(aside), np.inf, False)
    if eps > 2 * s:
        return fail
    if s == 0:  # no parity check: nothing to locate, nothing to verify (eps == 0 here)
        return _Location(frozenset(), frozenset(), 0.0, True)
    tau = (2 * s - eps) // 2
    aside_set = set(aside)
    clean = [j for j in usable if j not in aside_set]
    zs = np.array([z[j] for j in clean]).reshape(len(clean), zs_all.shape[1])
    parity = node_powers(nodes, np.arange(1, 2 * s + 1))  # (2s, n)
    g = parity[:, clean]
    g_known = parity[:, known]
    sharp_level = config.power * level

    def fit(sus: Sequence[int]) -> _Fit:
        return _fit_outside(g, zs, g_known, sus, nu, sharp_level)

    wide = min(2 * s - eps, len(clean))  # suspects that leave exactly n - 2s rows

    def top(score: np.ndarray, count: int) -> list[int]:
        return [int(i) for i in np.argsort(-score, kind="stable")[:count]]

    def concentrate(sus: list[int]) -> tuple[list[int], _Fit]:
        # Step 3: each step lowers the trimmed misfit; stop when the set repeats.
        seen: set[tuple[int, ...]] = set()
        f = fit(sus)
        start = (sus, f)
        while tuple(sorted(sus)) not in seen and len(seen) < 4 * tau + 8:
            seen.add(tuple(sorted(sus)))
            nxt = top(f.score, len(sus))
            if set(nxt) == set(sus):
                break
            f2 = fit(nxt)
            if f2.residual >= f.residual:
                break
            sus, f = nxt, f2
        if f.residual <= config.factor:
            return sus, f
        return min((sus, f), persist(*start), key=lambda c: c[1].residual)

    def persist(sus: list[int], f: _Fit) -> tuple[list[int], _Fit]:
        # Step 3b, only when step 3 ends inconsistent: carry on even when a step does not
        # lower the residual (one liar left among the kept rows dominates it however many
        # others were removed, yet the next step may reach it), keep the best set seen;
        # when the sets cycle, a wide step: fit without the ``wide`` worst rows (the code
        # through the n - 2s best rows) and take the worst rows against that fit.
        seen: set[tuple[int, ...]] = set()
        best = (sus, f)
        while len(seen) < 4 * tau + 8 and f.residual > config.factor:
            seen.add(tuple(sorted(sus)))
            nxt = top(f.score, len(sus))
            if tuple(sorted(nxt)) in seen and wide > len(sus):
                nxt = top(fit(top(f.score, wide)).score, len(sus))
            if tuple(sorted(nxt)) in seen:
                break
            sus, f = nxt, fit(nxt)
            if f.residual < best[1].residual:
                best = (sus, f)
        return best

    def greedy() -> list[int]:
        sus: list[int] = []
        f = fit(sus)
        while f.residual > config.factor and len(sus) < tau:
            cand = np.argsort(-f.score, kind="stable")
            sus.append(next(int(i) for i in cand if int(i) not in sus))
            f = fit(sus)
        return sus

    def backward(sus: list[int]) -> list[int]:
        # Put back the suspects that agree best with the codeword fitted without them.
        while len(sus) > tau:
            f = fit(sus)
            drop = max(1, (len(sus) - tau) // 2)
            keep = np.argsort(-f.score[sus], kind="stable")[: len(sus) - drop]
            sus = [sus[int(i)] for i in keep]
        return sus

    def peel(sus: list[int], rounds: int) -> list[int]:
        # Treat the suspects as erasures and locate again with the budget they leave
        # (liars next to a long erased arc are swamped in the first syndromes by the
        # visible ones), up to ``rounds`` times, then put back down to tau rows (backward).
        for _ in range(rounds):
            taken = set(sus)
            rest = [i for i in range(len(clean)) if i not in taken]
            more = (2 * s - eps - len(sus)) // 2
            if more <= 0 or not rest:
                break
            again = _pgz_ranking(
                nodes[[clean[i] for i in rest]],
                g[:, rest],
                zs[rest],
                nodes[known + [clean[i] for i in sus]],
                s,
                more,
            )
            sus = sus + [rest[int(i)] for i in again[:more]]
        return backward(sus)

    # Step 2, built lazily: most decodes are settled by the first candidate (step 4).
    starts: list[Callable[[], list[int]]] = []
    if tau > 0 and clean:
        ranked = _pgz_ranking(nodes[clean], g, zs, nodes[known], s, tau)
        starts.append(lambda: [int(i) for i in ranked[:tau]])
        if wide > tau:
            starts.append(lambda: backward([int(i) for i in ranked[:wide]]))
    if tau > 0 and clean:
        starts.append(greedy)
    if wide > tau > 0 and clean:
        starts.append(lambda: peel([int(i) for i in ranked[:tau]], 1))
        starts.append(lambda: peel([int(i) for i in ranked[:tau]], tau))
    if not starts:
        starts.append(list)
    # Step 4: the most consistent refined candidate; stop early at one within the noise.
    chosen: tuple[list[int], _Fit] | None = None
    for start in starts:
        cand = concentrate(start())
        if chosen is None or cand[1].residual < chosen[1].residual:
            chosen = cand
        if chosen[1].residual <= _SETTLED:
            break
    assert chosen is not None
    if chosen[1].residual > config.factor and 0 < tau < len(clean):
        # Step 2e. Liars adjacent on the circle are the ill-conditioned case for every
        # locator above; try every arc of tau consecutive nodes as the suspect set.
        angle = np.mod(np.round(np.angle(nodes[clean]) * nodes.size / (2 * np.pi)), nodes.size)
        by_angle = np.argsort(angle, kind="stable")
        m = len(clean)
        arcs = [[int(by_angle[(a + i) % m]) for i in range(tau)] for a in range(m)]
        best_arc = min(arcs, key=lambda a: fit(a).residual)
        arc_fit = concentrate(best_arc)
        if arc_fit[1].residual < chosen[1].residual:
            chosen = arc_fit
    if chosen[1].residual > config.factor:
        return _Location(frozenset(aside), frozenset(aside), chosen[1].residual, False)
    # Step 5.
    sus, f = chosen
    # The noise model is an upper bound (float32 accumulation at large d); the kept rows'
    # residual measures the actual noise. Trusted only with enough components, and never
    # below config.min_scale of the model (rows differ in magnitude, so per-row noise
    # differs too; and the fit's own float64 arithmetic is not in the residual).
    scale = min(1.0, max(f.rms, config.min_scale)) if f.samples >= 16 else 1.0
    liars = [i for i in sus if f.score[i] > config.clear_factor * scale]
    back = [i for i in sus if i not in liars and f.sharp[i]]
    excluded = [i for i in sus if i not in back]
    if back:
        f2 = fit(excluded)
        if f2.residual <= config.factor:
            f = f2
        else:
            excluded = list(sus)
    # Every set-aside row is named: it exceeds every honest row by config.huge.
    return _Location(
        frozenset(aside) | frozenset(clean[i] for i in liars),
        frozenset(aside) | frozenset(clean[i] for i in excluded),
        f.residual,
        len(excluded) <= tau,
    )


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


def _recover(
    rows: Mapping[int, np.ndarray],
    weights: np.ndarray,
    d: int,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Re(sum_j omega_j y_j) as float32 in one pass over the payloads; optionally its check.

    ``weights`` omega = w (``recovery_weights``) for the sum alone, or w + delta with delta a
    secret parity check (``check_weights``): Re(delta^T c) = 0 on codewords, so the real
    part is still the sum, and Im(omega^T c) = Im(p(0)) + Im(delta^T c) = 0 (the sum of real
    gradients is real) - the imaginary part of the same product checks the kept rows on
    every coordinate at no extra cost.

    Steps, per block of ``_RECOVERY_BLOCK`` coordinates
    ---------------------------------------------------
    1. Stage the kept rows' block into one (rows, block) complex matrix S (a copy at memory
       speed: the rows are separate arrays and BLAS needs one matrix). S stays in cache for
       step 2, so every payload byte is read from memory once.
    2. u = omega_G^T S_G, one complex gemv per group G of consecutive rows, summed in
       complex128 across groups. Why groups: the gemv sums in the payload
       precision; with liars or erasures the weights grow and the terms cancel, so a group
       holds at most _GROUP_BUDGET / amplification rows (amplification sqrt(n) ||omega||_2,
       1 without liars), bounding the rounding to about that many payload roundings.
    3. With ``rng``: the imaginary parts are projected on a fresh secret vector. Lane k of
       a block is its k-th run of block / K consecutive coordinates; lane k gets
       sum_i r_i Im(u_i) over its runs (fresh r in [-1, 1) per block), summed in float64.

    Returns
    -------
    gradient : ndarray, shape (d,), float32
    check : ndarray, shape (K,), float64, or None without ``rng``
        Near zero (payload rounding) when the kept rows are consistent; non-finite when a
        kept payload holds NaN/Inf.
    """
    out = np.empty(d, dtype=np.float32)
    k = PROJECTIONS
    check = np.zeros(k) if rng is not None else None
    keys = [j for j in sorted(rows) if weights[j] != 0]
    if not keys:
        out[:] = 0.0
        return out, check
    dtype = np.result_type(*(rows[j].dtype for j in keys))
    arrays = [rows[j].astype(dtype, copy=False) for j in keys]
    omega = weights[keys].astype(dtype)
    amplification = float(np.sqrt(weights.size) * np.linalg.norm(weights))
    group = max(1, min(len(keys), int(_GROUP_BUDGET // max(amplification, 1.0))))
    bounds = [(g, min(len(keys), g + group)) for g in range(0, len(keys), group)]
    # Same bytes per staged row for complex64 and complex128 (cache-sized).
    block = _RECOVERY_BLOCK if dtype == np.complex64 else _RECOVERY_BLOCK // 2
    staging = np.empty((len(keys), min(d, block)), dtype=dtype)
    acc = np.empty(staging.shape[1], dtype=np.complex128)
    for start in range(0, d, block):
        stop = min(d, start + block)
        size = stop - start
        # Step 1.
        s_mat = staging if size == staging.shape[1] else np.empty((len(keys), size), dtype)
        # One C call (np.stack would add a Python-level expand_dims per row and block).
        np.concatenate([a[start:stop] for a in arrays], out=s_mat.reshape(-1))
        # Step 2.
        if len(bounds) == 1:
            u = omega @ s_mat
        else:
            u = acc[:size]
            u[:] = 0.0
            for g0, g1 in bounds:
                u += omega[g0:g1] @ s_mat[g0:g1]
        out[start:stop] = u.real
        # Step 3.
        if check is not None and rng is not None:
            run = size // k
            imag = np.ascontiguousarray(u.imag)
            if run:
                r = rng.random(run) * 2 - 1
                check += imag[: run * k].reshape(k, run) @ r
            tail = size - run * k  # the < K trailing coordinates of a short block
            if tail:
                check[:tail] += (rng.random(tail) * 2 - 1) * imag[run * k :]
    return out, check


def decode_cyclic(
    nodes: np.ndarray,
    s: int,
    dtype: np.dtype,
    received: Mapping[int, np.ndarray],
    rng: np.random.Generator | None,
    config: CyclicDecoderConfig,
) -> DecodeResult:
    """Decode the cyclic code: the exact sum of the partition gradients and the liars.

    Steps
    -----
    1. Usable payloads: 1-D arrays of ``dtype`` whose length is the most common one (honest
       rows outnumber the liars, who may split over several lengths); the rest are erasures.
    2. Fast path, payloads of >= _SAMPLE_MIN_BLOCKS projection blocks (d >= 524,288):
       a. project every usable payload on a fresh secret random vector restricted to a
          secret random sample of 1/_SAMPLE_FRACTION of the blocks (``project_rows`` with
          ``blocks``): one eighth of the memory traffic;
       b. locate on those projections (``locate_cyclic``), recovery weights w;
       c. one pass over the kept rows with weights w + delta, delta a fresh secret parity
          check of the kept rows (``check_weights``, ||delta|| = ||w||): the real part is
          the sum, the imaginary part checks every coordinate (``_recover`` with ``rng``);
       d. (skipped when the recovery is too amplified, see step 5, or 2s rows are bad;
          the weights are those of step 5)
          accept if the result is finite and the check's lanes are within config.factor
          noise units: noise unit = relative_noise(d) x the median row level on the SAMPLE
          x ||w + delta|| (a row's projection grows with the coordinates it covers, so the
          sample's level is at most the full one's: the test is at least as strict as the
          full path's). Otherwise (a lie or NaN outside the sample, a failed check, nothing
          left to check) fall through to the full path.
       Sound: what is returned was checked on every coordinate.
    3. Full path: project every usable payload on a fresh secret random vector over all
       coordinates (``project_rows``); non-finite projections (NaN/Inf) are erasures.
    4. Locate the liars (``locate_cyclic``: PGZ locator, refits, self-check).
    5. Recovery weights over all presumed-honest rows (``_weights``: the float64
       minimum-norm ones, or, when the bad rows cluster on the circle, regularised ones
       computed in long double). Refuse when the expected relative error
       (``_expected_error``: payload rounding x sqrt(n) ||w|| plus the weights' own error)
       still exceeds config.max_error: the payload precision cannot pin the sum down
       (complex128 payloads decode most such patterns). Then one pass over the payloads:
       gradient = Re(sum_j w_j y_j) (``_recover``).
    6. Check the result is finite.

    Raises
    ------
    DecodeError
        More erasures than 2s, or an inconsistent self-check (more liars than the budget
        allows), or a recovery too amplified for the payload precision (step 5), or a
        non-finite result.
    """
    n = nodes.size
    if rng is None:
        rng = np.random.default_rng()  # fresh OS entropy: the projection must stay secret
    # Step 1.
    arrays: dict[int, np.ndarray] = {}
    for j in range(n):
        arr = _well_formed(received.get(j), dtype)
        if arr is not None:
            arrays[j] = arr
    lengths: dict[int, int] = {}
    for arr in arrays.values():
        lengths[arr.size] = lengths.get(arr.size, 0) + 1
    if not lengths:
        raise DecodeError(f"no usable payload among {n} workers (expected 1-D {dtype} arrays)")
    d = max(lengths, key=lambda k: (lengths[k], -k))
    arrays = {j: a for j, a in arrays.items() if a.size == d}
    # Step 2 (fast path): locate on a secret sample of the coordinates, then recover and
    # check the kept rows on ALL coordinates in the same pass.
    n_blocks = -(-(d // PROJECTIONS) // max(1, _PROJECTION_CHUNK // PROJECTIONS))
    if n_blocks >= _SAMPLE_MIN_BLOCKS:
        size = max(1, n_blocks // _SAMPLE_FRACTION)
        blocks = sorted(int(b) for b in rng.choice(n_blocks, size, replace=False))
        z = project_rows(arrays, d, rng, blocks)
        usable = {j: v for j, v in z.items() if np.isfinite(v).all()}
        erasures = frozenset(range(n)) - frozenset(usable)
        if len(erasures) <= 2 * s:
            loc = locate_cyclic(nodes, s, usable, erasures, config, config.relative_noise(d))
            bad = sorted(erasures | loc.excluded)
            located = loc.within_budget and loc.residual <= config.factor and len(bad) < 2 * s
            w, expected = _weights(nodes, s, bad, config) if located else (None, np.inf)
            if w is not None and expected <= config.max_error:
                omega = w + check_weights(nodes, s, bad, rng, float(np.linalg.norm(w)))
                kept = {j: arrays[j] for j in usable if j not in bad}
                gradient, check = _recover(kept, omega, d, rng)
                unit = config.relative_noise(d) * _level(usable) * float(np.linalg.norm(omega))
                if (
                    check is not None
                    and np.isfinite(gradient).all()
                    and np.isfinite(check).all()
                    and float(np.max(np.abs(check))) <= config.factor * unit
                ):
                    return DecodeResult(gradient, loc.liars, erasures)
    # Step 3 (full path).
    z = project_rows(arrays, d, rng)
    usable = {j: v for j, v in z.items() if np.isfinite(v).all()}
    erasures = frozenset(range(n)) - frozenset(usable)
    if len(erasures) > 2 * s:
        raise DecodeError(
            f"{len(erasures)} of {n} workers missing or unusable ({sorted(erasures)}): the "
            f"cyclic code with s={s} corrects 2*errors + erasures <= {2 * s}. Wait for more "
            f"workers (raise the round timeout)."
        )
    # Step 4.
    loc = locate_cyclic(nodes, s, usable, erasures, config, config.relative_noise(d))
    if not (loc.within_budget and loc.residual <= config.factor):
        raise DecodeError(
            f"cyclic decode failed its self-check (residual {loc.residual:.3g} noise units "
            f"after removing liars {sorted(loc.liars)} and erasures {sorted(erasures)}): "
            f"the payloads are beyond the budget 2*liars + erasures <= 2s = {2 * s}. Wait "
            f"for more workers or run with a larger s."
        )
    # Step 5.
    bad = sorted(erasures | loc.excluded)
    w, expected = _weights(nodes, s, bad, config)
    if expected > config.max_error:
        tip = (
            ", or run the cyclic code with payload_dtype='complex128' or 'auto'"
            if dtype == np.complex64
            else ""
        )
        raise DecodeError(
            f"the {len(bad)} missing or lying workers {bad} sit close together on the "
            f"code's circle: the other rows cannot pin the sum down in {dtype} (expected "
            f"relative error {expected:.1e} > max_error {config.max_error:.0e}; recovery "
            f"amplification {float(np.sqrt(n) * np.linalg.norm(w)):.3g}). Wait for more "
            f"workers{tip}."
        )
    honest = {j: arrays[j] for j in usable if j not in loc.excluded}
    gradient, _ = _recover(honest, w, d)
    # Step 6.
    if not np.isfinite(gradient).all():
        raise DecodeError("cyclic decode produced non-finite values (payloads overflow float32)")
    return DecodeResult(gradient, loc.liars, erasures)


def _level(z: Mapping[int, np.ndarray]) -> float:
    """Median over rows of the rms projection magnitude (honest rows are the majority)."""
    zs = np.array(list(z.values()))
    return float(np.median(np.sqrt(np.mean(np.abs(zs) ** 2, axis=1))))


def _expected_error(w: np.ndarray, s: int, nodes: np.ndarray, config: CyclicDecoderConfig) -> float:
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
#: ``_weights`` tries the extended-precision weights once the float64 ones are expected to
#: be off by more than this fraction of config.max_error (1e-6 by default: the issue's
#: accuracy goal).
_REFINE_FRACTION = 0.1
#: Tikhonov parameters tried by ``_regularised_weights``, in units of rounding x n (the
#: balance point of the two parts of ``_expected_error``). Measured, 2s adjacent
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
    relative error of 6). The best weights trade the two parts of ``_expected_error``.

    Steps
    -----
    1. A[m, q] = x_m^q for m in bad, q = 1..2s, in long double (``node_powers``).
    2. For each lambda = g x config.rounding x n, g in _TIKHONOV_GRID: beta minimises
       ||A beta + 1/n||^2 + lambda^2 ||beta||^2 (``_householder_lstsq`` on [A; lambda I]),
       w = 1/n + sum_q beta_q x^q, w_bad = 0, rounded to complex128.
    3. Keep the w with the smallest ``_expected_error`` (evaluated on the rounded weights).

    Measured (2s adjacent erasures, expected error float64 -> this; 40-digit optimum of
    the same model with mpmath): (70, 25) 1.1e-5 -> 5.7e-8; (99, 37) 4.9e-5 -> 3.5e-6
    (3.3e-6); (100, 35) 1.4e-5 -> 1.2e-6 (1.2e-6); (100, 44) 2.7e-5 -> 1.3e-7.

    Returns
    -------
    w : ndarray, shape (n,), complex128
    expected : float
        Its ``_expected_error``.
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
        expected = _expected_error(w, s, nodes, config)
        if best is None or expected < best[1]:
            best = (w, expected)
    assert best is not None
    return best


def _weights(
    nodes: np.ndarray, s: int, bad: Sequence[int], config: CyclicDecoderConfig
) -> tuple[np.ndarray, float]:
    """Recovery weights without the ``bad`` rows and their expected relative error.

    The float64 minimum-norm weights (``recovery_weights``, microseconds) unless they are
    expected to be off by more than _REFINE_FRACTION x config.max_error; then the better
    of them and the extended-precision ``_regularised_weights`` (0.1-0.3 s, cached per
    pattern: a worker that stays away keeps its erasure pattern from round to round).
    """
    w = recovery_weights(nodes, s, bad)
    expected = _expected_error(w, s, nodes, config)
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
