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
    "Projections",
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
    "sum_group_values",
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
    total = sum_group_values(winners, s)
    return DecodeResult(total, frozenset(adversaries), frozenset(erasures))


def sum_group_values(winners: Sequence[np.ndarray], s: int) -> np.ndarray:
    """The repetition code's decoded sum: the groups' agreed values added in group order.

    Parameters
    ----------
    winners : sequence of ndarray, shape (d,), float32
        Group g's agreed value (>= s+1 identical copies) at position g.
    s : int
        Liars tolerated per group (for the message).

    Returns
    -------
    ndarray, shape (d,), float32
        winners[0] + winners[1] + ... accumulated in float32 in that order (a new array).

    Raises
    ------
    DecodeError
        Values of different lengths, or a non-finite sum.
    """
    shapes = {w.shape for w in winners}
    if len(shapes) != 1:
        raise DecodeError(
            f"repetition groups agree on payloads of different lengths {sorted(shapes)}: the "
            f"workers run different tasks (check that every worker has the same model)"
        )
    total = np.array(winners[0], dtype=np.float32, copy=True)
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
    return total


# ---------------------------------------------------------------------------------------------
# Cyclic code: secret projection, errors-and-erasures location, least-squares recovery
# ---------------------------------------------------------------------------------------------

#: Payload rows per float64 partial product in ``project_rows`` (rows of the (d/K, 2K) view):
#: each chunk (2 MB in float64) is cast to float64 in cache before the product, so the
#: projection's own arithmetic adds about 1e-16 x sqrt(chunk) relative error, far below
#: complex64 rounding. Measured at n = 45, d = 1,033,510 (full projection, shared machine):
#: 512-2048 rows 157-180 ms, 8192 rows 370 ms (the float64 chunk no longer fits in cache).
_PROJECTION_CHUNK = 1 << 11
#: Rows of the (d/K, 2K) view per block of the fast path's secret sample (65,536 coordinates).
_SAMPLE_BLOCK = 1 << 10
#: The sample's lane energies are summed over every this-many-th row (``project_rows``).
_SAMPLE_STRIDE = 4
#: Lanes per projection weight vector: coordinate i goes to lane i mod PROJECTIONS.
PROJECTIONS = 64
#: Independent secret weight vectors per lane (every coordinate is seen by this many lanes,
#: so a lie on one coordinate is missed only if all its weights are small: probability
#: ~ eps**WEIGHTS instead of eps).
WEIGHTS = 2
#: Coordinates per block of the recovery pass (``_recover``): 40 complex64 rows of a block
#: take 5 MB, staged once and read back from cache by the gemv. Measured at n = 45,
#: d = 1,033,510 (whole pass): 4096: 24.6 ms, 8192: 21.2, 16384: 19.3, 32768: 24.3.
_RECOVERY_BLOCK = 1 << 14
#: Payloads with at least this many projection chunks are located on a secret random sample
#: of 1 / _SAMPLE_FRACTION of the chunks; the recovery pass then checks the kept rows on all
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
class CyclicDecoderConfig:
    """Tolerances of the cyclic decoder. Noise is measured, not guessed: see ``unit``.

    Attributes
    ----------
    unit : float
        Bound on the relative rounding error of one payload coordinate: the honest
        projection z = sum_i r_i y_i (r_i uniform in [-1, 1)) is off from the exact codeword
        by at most ``unit`` x sqrt(sum_i |y_i|^2 / 3) in standard deviation over the secret r
        (``project_rows`` returns the sums of squares). complex64: 2**-24 (round to
        nearest); complex128: ``for_dtype`` adds the float64 arithmetic of encoding and
        projection.
    factor : float
        Kept rows are consistent while their residual is <= ``factor`` noise units
        (whitened: an honest component has standard deviation <= 1).
    clear_factor : float
        A suspect is named a liar when its projection deviates from the codeword predicted
        by the kept rows by more than ``clear_factor`` x (its own noise bound + the
        prediction's), in some lane. Between ``factor`` and this a suspect is left out of
        the sum but not named.
    power : float
        A suspect that is not named goes back into the recovery only if its prediction is
        sharp (std <= ``power`` x the typical honest |z|) and the kept rows stay consistent;
        otherwise it stays out of the sum (a lie up to the prediction's noise could hide
        in it).
    huge : float
        A projection more than ``huge`` x the (s+1)-th largest one is set aside before the
        locator runs (it would swamp the syndromes in float64); it is named a liar.
    check_factor : float
        The recovery pass's check (``_recover``) passes while its 2-norm is <=
        ``check_factor`` x its noise bound (``check_unit`` x the kept rows' energy).
    check_unit : float
        Bound on the relative error of one coordinate of a weighted sum of payload rows in
        the payload precision (rounding of the rows plus the gemv's accumulation).
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

    unit: float = 2.0**-24
    factor: float = 8.0
    clear_factor: float = 30.0
    power: float = 1e-3
    huge: float = 1e6
    check_factor: float = 3.0
    check_unit: float = 4 * 2.0**-24
    rounding: float = 2.2e-8
    max_error: float = 1e-5

    @classmethod
    def for_dtype(cls, dtype: np.dtype, s: int) -> CyclicDecoderConfig:
        """The defaults for payloads of ``dtype`` of a code with s adversaries.

        complex128: the payload's own rounding (2**-53) is no longer the largest error; the
        float64 encoding (2s+1 products with coefficients rounded once) and the float64
        projection (sums of ``_PROJECTION_CHUNK`` products) add about (2s + 2) and
        sqrt(chunk) units of 2**-53; the bound takes twice their sum.
        """
        if np.dtype(dtype) == np.complex64:
            return cls()
        eps = 2.0**-53
        arithmetic = 2 * (2 * s + 2 + float(np.sqrt(_PROJECTION_CHUNK)))
        return cls(unit=eps * arithmetic, check_unit=4 * eps * arithmetic, rounding=3e-17)


@dataclass(frozen=True)
class Projections:
    """Secret projections of the payload rows and their measured noise.

    Attributes
    ----------
    z : dict int -> ndarray, shape (L,), complex128
        L = WEIGHTS x PROJECTIONS lanes: z[j][a K + k] = sum_m r^(a)_m y_j[m K + k].
    energy : dict int -> ndarray, shape (L,), float64
        sum of |y_j[i]|^2 over the coordinates of each lane: the noise basis (the rounding
        of lane l of row j has standard deviation <= unit x sqrt(energy[j][l] / 3)).
    coordinates : int
        How many coordinates were projected (d, or fewer for a sample).
    arithmetic : float
        Factor on the noise bound for the projection's own arithmetic: 1 when it summed in
        float64; 1 + sqrt(_SAMPLE_BLOCK) for the fast path's sample, summed in float32 over
        blocks of _SAMPLE_BLOCK rows (the sample only picks the rows to leave out; the
        recovery pass then checks every coordinate against the tight bound).
    """

    z: dict[int, np.ndarray]
    energy: dict[int, np.ndarray]
    coordinates: int
    arithmetic: float = 1.0

    def finite(self) -> Projections:
        """The rows whose projections are finite (NaN/Inf payloads are erasures)."""
        keep = [j for j, v in self.z.items() if np.isfinite(v).all()]
        return Projections(
            {j: self.z[j] for j in keep},
            {j: self.energy[j] for j in keep},
            self.coordinates,
            self.arithmetic,
        )


def _all_complex64(rows: Mapping[int, np.ndarray]) -> bool:
    """True when every payload is complex64 (its real view is float32)."""
    return all(y.dtype == np.complex64 for y in rows.values())


def project_rows(
    rows: Mapping[int, np.ndarray],
    d: int,
    rng: np.random.Generator,
    blocks: Sequence[int] | None = None,
) -> Projections:
    """Project each payload on WEIGHTS x K secret random vectors in one pass.

    Lane (a, k) sees the coordinates i = k (mod K): z_{j,(a,k)} = sum_m r^(a)_m y_j[mK+k],
    with r^(a)_m uniform in [-1, 1) (and extra weights for the d mod K trailing coordinates).
    Each z is complex-linear in y_j, so every lane of the projected payloads is a codeword
    of the same Reed-Solomon code plus the projected errors [CWCP18, section 5]. A nonzero
    error changes some projection with probability one [Fre97]; r is drawn here, after the
    payloads arrived, so a liar cannot aim at its null space.

    Steps, per chunk of ``_PROJECTION_CHUNK`` rows of the (d/K, 2K) real view
    -------------------------------------------------------------------------
    1. Cast the chunk to float64 (in cache): the projection adds no float32 accumulation
       error, so the only noise left is the payload's own rounding. (Not for a sample:
       ``Projections.arithmetic``.)
    2. (WEIGHTS, chunk) @ (chunk, 2K): the lanes' partial projections, summed over chunks.
    3. The chunk's sum of squares per column: the lanes' energies (the noise basis).

    Parameters
    ----------
    rows : mapping int -> ndarray, shape (d,), complex64 or complex128, C-contiguous
    d : int
    rng : numpy Generator
    blocks : sequence of int or None
        None: every coordinate. Otherwise only these blocks of ``_SAMPLE_BLOCK`` x K
        coordinates (a secret random sample, see ``decode_cyclic``; the tail is skipped).

    Returns
    -------
    Projections
        Non-finite entries when the payload holds NaN/Inf (they propagate through the sums).
    """
    k = PROJECTIONS
    m = d // k
    head = m * k
    r = rng.random((WEIGHTS, m)) * 2 - 1
    r_tail = rng.random((WEIGHTS, d - head)) * 2 - 1
    if blocks is None:
        spans = [(a, min(m, a + _PROJECTION_CHUNK)) for a in range(0, m, _PROJECTION_CHUNK)]
    else:
        spans = [(b * _SAMPLE_BLOCK, min(m, (b + 1) * _SAMPLE_BLOCK)) for b in blocks]
    # The sample sums in the payload's precision (no float64 copy: it costs more than the
    # sample's whole read), one BLAS call per block; the noise bound says so (arithmetic).
    exact = blocks is None
    # The sample's weights in the payload's real precision (no per-chunk cast).
    r_low = None if exact else r.astype(np.float32 if _all_complex64(rows) else np.float64)
    coordinates = sum(b - a for a, b in spans) * k
    tail = d - head if blocks is None else 0
    coordinates += tail
    z: dict[int, np.ndarray] = {}
    energy: dict[int, np.ndarray] = {}
    for j, y in rows.items():
        real = y.view(np.float32 if y.dtype == np.complex64 else np.float64)
        acc = np.zeros((WEIGHTS, 2 * k))
        sq = np.zeros(2 * k)
        if m:
            mat = real[: 2 * head].reshape(m, 2 * k)
            for start, stop in spans:
                # Step 1.
                chunk: np.ndarray = mat[start:stop]
                if exact:
                    chunk = chunk.astype(np.float64, copy=False)
                    acc += r[:, start:stop] @ chunk  # Step 2.
                else:
                    assert r_low is not None
                    acc += r_low[:, start:stop] @ chunk
                # Step 3 (a dot per column: no squared temporary). The sample estimates its
                # energies from every _SAMPLE_STRIDE-th row: they only scale its (already
                # loose) bound; the full projection and the recovery check use exact ones.
                part = chunk if exact else chunk[::_SAMPLE_STRIDE]
                scale = 1.0 if exact else chunk.shape[0] / max(part.shape[0], 1)
                sq += scale * np.einsum("ij,ij->j", part, part)
        if tail:
            pairs = real[2 * head : 2 * d].astype(np.float64)  # (2 tail,) re, im, re, ...
            acc[:, : 2 * tail] += np.repeat(r_tail, 2, axis=1) * pairs
            sq[: 2 * tail] += pairs * pairs
        lanes = acc[:, 0::2] + 1j * acc[:, 1::2]  # (WEIGHTS, K)
        z[j] = lanes.reshape(-1)
        energy[j] = np.tile(sq[0::2] + sq[1::2], WEIGHTS)
    arithmetic = 1.0 if exact else 1.0 + float(np.sqrt(_SAMPLE_BLOCK))
    return Projections(z, energy, coordinates, arithmetic)


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
) -> _Location:
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
    usable = sorted(proj.z)
    zs_all = np.array([proj.z[j] for j in usable])  # (m, L)
    # Step 1.
    energies = np.array([proj.energy[j] for j in usable])
    sigma = config.unit * proj.arithmetic * np.sqrt(energies / 3.0)
    # Within the budget at most tau = floor((2s - e) / 2) of the usable rows lie: the
    # (tau+1)-th largest bound is then at least the largest honest one whenever the liars
    # inflate theirs (with heavy erasures few rows are left and the (s+1)-th would be the
    # smallest, below most honest rows' noise when a lane holds few coordinates).
    lane = _lane_scale(sigma, max(0, (2 * s - len(erasures)) // 2))
    zs_all = zs_all / lane
    own_all = sigma / lane  # each row's own noise bound in lane units (naming, step 5)
    mags = np.abs(zs_all)
    level = _level(dict(enumerate(zs_all)))
    nu = 1.0
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
    clean_idx = [i for i, j in enumerate(usable) if j not in aside_set]
    zs = zs_all[clean_idx].reshape(len(clean), zs_all.shape[1])
    own = own_all[clean_idx].reshape(zs.shape)
    parity = node_powers(nodes, np.arange(1, 2 * s + 1))  # (2s, n)
    g = parity[:, clean]
    g_known = parity[:, known]
    sharp_level = config.power * level

    kept_forced: set[int] = set()  # rows a search may not leave out (step 5)

    def fit(sus: Sequence[int]) -> _Fit:
        f = _fit_outside(g, zs, g_known, sus, nu, sharp_level, own)
        if kept_forced:
            f.score[list(kept_forced)] = -np.inf  # never proposed as a suspect
        return f

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

    def ranking(rest: list[int], erased: list[int], count: int) -> list[int]:
        # The PGZ ranking of the rows ``rest`` (indices into clean) with ``erased`` (nodes
        # of rows left out) as erasures; rows forced in are never proposed.
        order = _pgz_ranking(
            nodes[[clean[i] for i in rest]], g[:, rest], zs[rest], nodes[erased], s, count
        )
        return [rest[int(i)] for i in order if rest[int(i)] not in kept_forced]

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
            sus = sus + ranking(rest, known + [clean[i] for i in sus], more)[:more]
        return backward(sus)

    circle = np.mod(np.round(-np.angle(nodes) * nodes.size / (2 * np.pi)), nodes.size)
    where = circle[clean].astype(int)

    def swaps(
        sus: list[int], f: _Fit, rounds: int, rows: Sequence[int] | None = None
    ) -> tuple[list[int], _Fit]:
        # Step 4b: swap one suspect for a kept row next to a suspect on the circle (or
        # among the worst-fitting kept rows) while that lowers the residual. With ``rows``:
        # only suspects among ``rows`` for kept rows among ``rows`` (a local search).
        n_nodes = nodes.size
        for _ in range(rounds):
            if rows is None:
                near = {int((where[i] + d) % n_nodes) for i in sus for d in (-2, -1, 1, 2)}
                pool = [
                    i
                    for i in range(len(clean))
                    if i not in sus and i not in kept_forced and int(where[i]) in near
                ]
                pool += [i for i in top(f.score, 2 * tau) if i not in sus and i not in pool]
            else:
                pool = [i for i in rows if i not in sus]
            best = (sus, f)
            for a in range(len(sus)):
                if rows is not None and sus[a] not in rows:
                    continue
                for b in pool:
                    trial = [*sus[:a], b, *sus[a + 1 :]]
                    ft = fit(trial)
                    if ft.residual < best[1].residual:
                        best = (trial, ft)
            if best[0] is sus:
                break
            sus, f = best
            if f.residual <= _SETTLED:
                break
        return sus, f

    def search(rounds: int) -> tuple[list[int], _Fit]:
        # Steps 2-4: the most consistent candidate of size <= tau that keeps kept_forced.
        # No suspect at all when every row fits (most rounds): the decode then depends on
        # the payloads only, not on the secret projection (reproducible bit for bit).
        nobody: tuple[list[int], _Fit] = ([], fit([]))
        if nobody[1].residual <= _SETTLED:
            return nobody
        full = [i for i in range(len(clean))]
        starts: list[Callable[[], list[int]]] = []
        if tau > 0 and clean:
            ranked = ranking(full, list(known), tau)
            starts.append(lambda: ranked[:tau])
            if wide > tau:
                starts.append(lambda: backward(ranked[:wide]))
            starts.append(greedy)
            if wide > tau:
                starts.append(lambda: peel(ranked[:tau], 1))
                starts.append(lambda: peel(ranked[:tau], tau))
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
            by_angle = np.argsort(where, kind="stable")
            m = len(clean)
            arcs = [[int(by_angle[(a + i) % m]) for i in range(tau)] for a in range(m)]
            arcs = [arc for arc in arcs if not kept_forced.intersection(arc)]
            if arcs:
                best_arc = min(arcs, key=lambda a: fit(a).residual)
                arc_fit = concentrate(best_arc)
                if arc_fit[1].residual < chosen[1].residual:
                    chosen = arc_fit
        if chosen[1].residual > _SETTLED and 0 < tau < len(clean):
            chosen = swaps(*chosen, rounds)
        if chosen[1].residual > config.factor and 0 < tau < len(clean):
            chosen = min(chosen, beam(chosen[0]), key=lambda c: c[1].residual)
        return chosen

    def beam(seed: list[int]) -> tuple[list[int], _Fit]:
        # Step 4c, the last resort: forward selection by the residual itself (not by the
        # misfit scores, which a contaminated fit spreads over honest rows), keeping the
        # _BEAM best sets, over a pool of the rows every other step pointed at.
        f0 = fit([])
        pool = set(seed) | set(top(f0.score, 2 * tau))
        pool |= set(ranking(list(range(len(clean))), list(known), tau)[: 2 * tau])
        pool |= {int(i) for i in top(fit(seed).score, 2 * tau)}
        pool -= kept_forced
        layer: list[tuple[list[int], _Fit]] = [([], f0)]
        best = layer[0]
        for _ in range(tau):
            grown: dict[tuple[int, ...], tuple[list[int], _Fit]] = {}
            for sus, _f in layer:
                for i in pool - set(sus):
                    key = tuple(sorted([*sus, i]))
                    if key not in grown:
                        grown[key] = (list(key), fit(list(key)))
            layer = sorted(grown.values(), key=lambda c: c[1].residual)[:_BEAM]
            if not layer:
                break
            if layer[0][1].residual < best[1].residual:
                best = layer[0]
            if best[1].residual <= _SETTLED:
                break
        return best

    def certainly_lies(sus: list[int], i: int) -> bool:
        # Step 5: suspect i is named only if no candidate that keeps it is consistent.
        # The rows whose lies an ill-conditioned fit can absorb and push onto an honest
        # suspect are its neighbours on the circle (a codeword within the noise on the kept
        # rows can be 1e8 times larger at a node inside a gap of 2s adjacent nodes, n = 45,
        # s = 5). a. Quick proof: the code cannot fit row i even with its tau nearest kept
        # rows left out as well. b. Else a local search with row i kept: the suspects but i
        # plus one of its 2 tau nearest kept rows, then swaps.
        gap = np.abs(((where - where[i]) + nodes.size / 2) % nodes.size - nodes.size / 2)
        near = [int(k) for k in np.argsort(gap, kind="stable") if k != i and k not in sus]
        others = [k for k in sus if k != i]
        if fit(others + near[:tau]).residual > config.factor:
            return True
        kept_forced.add(i)
        try:
            local = near[: 2 * tau]
            trials = [[*others, k] for k in local] if len(sus) == tau else [others]
            best = min(((t, fit(t)) for t in trials), key=lambda c: c[1].residual)
            if best[1].residual > _HOPELESS * config.factor:
                return True
            # The region: the local kept rows and the suspects among them on the circle.
            reach = max(float(gap[k]) for k in local) if local else 0.0
            region = local + [k for k in others if gap[k] <= reach]
            return swaps(*best, rounds=2, rows=region)[1].residual > config.factor
        finally:
            kept_forced.discard(i)

    chosen = search(rounds=4 * tau + 8)
    if chosen[1].residual > config.factor:
        return _Location(frozenset(aside), frozenset(aside), chosen[1].residual, False)
    # Step 5.
    sus, f = chosen
    # A gross lie (a deviation as large as a typical honest projection) is named at once;
    # a subtler one only once the search that keeps it fails (``certainly_lies``).
    liars = [
        i
        for i in sus
        if f.evidence[i] > config.clear_factor
        and (f.deviation[i] >= level or certainly_lies(sus, i))
    ]
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
    delta: np.ndarray | None = None,
) -> tuple[np.ndarray, float | None]:
    """Re(sum_j w_j y_j) as float32 in one pass over the payloads; optionally its check.

    The gradient depends on the kept rows and ``weights`` only, never on a random draw:
    a decode is reproducible bit for bit (a resumed run ends on the same model).

    Steps, per block of ``_RECOVERY_BLOCK`` coordinates
    ---------------------------------------------------
    1. Stage the kept rows' block into one (rows, block) complex matrix S (a copy at memory
       speed: the rows are separate arrays and BLAS needs one matrix). S stays in cache for
       steps 2-3, so every payload byte is read from memory once.
    2. u = w_G^T S_G, one complex gemv per group G of consecutive rows, summed in
       complex128 across groups. Why groups: the gemv sums in the payload
       precision; with liars or erasures the weights grow and the terms cancel, so a group
       holds at most _GROUP_BUDGET / amplification rows (amplification sqrt(n) ||w||_2,
       1 without liars), bounding the rounding to about that many payload roundings.
       Re(u) is the block of the sum.
    3. With ``delta`` (a secret parity check of the kept rows, ``check_weights``): c =
       delta^T S the same way (a second gemv on the staged block, still in cache);
       accumulate ||c||^2 in float64. delta^T c = 0 on codewords: on consistent rows c is
       payload rounding, on every coordinate.

    Returns
    -------
    gradient : ndarray, shape (d,), float32
    check : float or None (without ``delta``)
        ||delta^T Y_kept||_2 over all coordinates; non-finite when a kept payload holds
        NaN/Inf.
    """
    out = np.empty(d, dtype=np.float32)
    keys = [j for j in sorted(rows) if weights[j] != 0]
    if not keys:
        out[:] = 0.0
        return out, (0.0 if delta is not None else None)
    dtype = np.result_type(*(rows[j].dtype for j in keys))
    arrays = [rows[j].astype(dtype, copy=False) for j in keys]
    vectors = [weights[keys].astype(dtype)]
    if delta is not None:
        vectors.append(delta[keys].astype(dtype))
    amplification = float(np.sqrt(weights.size) * np.linalg.norm(weights))
    group = max(1, min(len(keys), int(_GROUP_BUDGET // max(amplification, 1.0))))
    bounds = [(g, min(len(keys), g + group)) for g in range(0, len(keys), group)]
    # Same bytes per staged row for complex64 and complex128 (cache-sized).
    block = _RECOVERY_BLOCK if dtype == np.complex64 else _RECOVERY_BLOCK // 2
    staging = np.empty((len(keys), min(d, block)), dtype=dtype)
    acc = np.empty(staging.shape[1], dtype=np.complex128)
    parity = 0.0
    for start in range(0, d, block):
        stop = min(d, start + block)
        size = stop - start
        # Step 1.
        s_mat = staging if size == staging.shape[1] else np.empty((len(keys), size), dtype)
        # One C call (np.stack would add a Python-level expand_dims per row and block).
        np.concatenate([a[start:stop] for a in arrays], out=s_mat.reshape(-1))
        for which, vec in enumerate(vectors):
            # Steps 2 and 3.
            if len(bounds) == 1:
                u = vec @ s_mat
            else:
                u = acc[:size]
                u[:] = 0.0
                for g0, g1 in bounds:
                    u += vec[g0:g1] @ s_mat[g0:g1]
            if which == 0:
                out[start:stop] = u.real
            else:
                parity += float(np.vdot(u, u).real)
    return out, (float(np.sqrt(parity)) if delta is not None else None)


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
    2. Fast path, payloads of >= _SAMPLE_MIN_BLOCKS projection chunks (d >= 524,288):
       a. project every usable payload on fresh secret random vectors restricted to a
          secret random sample of 1/_SAMPLE_FRACTION of the chunks (``project_rows`` with
          ``blocks``): one eighth of the memory traffic;
       b. locate on those projections (``locate_cyclic``), recovery weights w (step 5);
       c. one pass over the kept rows (``_recover``): the sum Re(w^T Y) and, on every
          coordinate, the check ||delta^T Y|| for a fresh secret parity check delta of the
          kept rows (``check_weights``, complex: a lie e_j is missed only if |delta_j e_j|
          is small, probability ~ eps^2 over the secret draw);
       d. accept if the result is finite and the check is <= config.check_factor x its
          noise bound, config.check_unit x sqrt(sum_j |delta_j|^2 E_j), with E_j row j's
          energy estimated from the sample (sample energy x d / sampled coordinates: a lie
          outside the sample cannot raise it). Otherwise (a lie or NaN
          outside the sample, a failed check, nothing left to check) fall through to the
          full path. Sound: what is returned was checked on every coordinate.
    3. Full path: project every usable payload over all coordinates (``project_rows``);
       non-finite projections (NaN/Inf) are erasures.
    4. Locate the liars (``locate_cyclic``: PGZ locator, refits, self-check).
    5. Recovery weights over all presumed-honest rows (``_weights``: the float64
       minimum-norm ones, or, when the bad rows cluster on the circle, regularised ones
       computed in long double). Refuse when the expected relative error
       (``_expected_error``: payload rounding x sqrt(n) ||w|| plus the weights' own error)
       still exceeds config.max_error: the payload precision cannot pin the sum down
       (complex128 payloads decode most such patterns). Then one pass over the payloads:
       gradient = Re(sum_j w_j y_j) (``_recover``), the same arithmetic as step 2c.
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
    n_blocks = -(-(d // PROJECTIONS) // _SAMPLE_BLOCK)
    if n_blocks >= _SAMPLE_MIN_BLOCKS:
        size = max(1, n_blocks // _SAMPLE_FRACTION)
        blocks = sorted(int(b) for b in rng.choice(n_blocks, size, replace=False))
        sample = project_rows(arrays, d, rng, blocks).finite()
        erasures = frozenset(range(n)) - frozenset(sample.z)
        if len(erasures) <= 2 * s:
            loc = locate_cyclic(nodes, s, sample, erasures, config)
            bad = sorted(erasures | loc.excluded)
            located = loc.within_budget and loc.residual <= config.factor and len(bad) < 2 * s
            w, expected = _weights(nodes, s, bad, config) if located else (None, np.inf)
            if w is not None and expected <= config.max_error:
                delta = check_weights(nodes, s, bad, rng, float(np.linalg.norm(w)))
                kept = {j: arrays[j] for j in sample.z if j not in bad}
                gradient, check = _recover(kept, w, d, delta)
                scale = d / max(sample.coordinates, 1)
                energy = np.zeros(n)
                for j in kept:
                    energy[j] = float(np.sum(sample.energy[j][:PROJECTIONS])) * scale
                bound = config.check_unit * float(np.sqrt(np.abs(delta) ** 2 @ energy))
                if (
                    check is not None
                    and np.isfinite(gradient).all()
                    and np.isfinite(check)
                    and check <= config.check_factor * bound
                ):
                    return DecodeResult(gradient, loc.liars, erasures)
    # Step 3 (full path).
    full = project_rows(arrays, d, rng).finite()
    erasures = frozenset(range(n)) - frozenset(full.z)
    if len(erasures) > 2 * s:
        raise DecodeError(
            f"{len(erasures)} of {n} workers missing or unusable ({sorted(erasures)}): the "
            f"cyclic code with s={s} corrects 2*errors + erasures <= {2 * s}. Wait for more "
            f"workers (raise the round timeout)."
        )
    # Step 4.
    loc = locate_cyclic(nodes, s, full, erasures, config)
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
    honest = {j: arrays[j] for j in full.z if j not in loc.excluded}
    gradient, _ = _recover(honest, w, d)
    # Step 6.
    if not np.isfinite(gradient).all():
        raise DecodeError("cyclic decode produced non-finite values (payloads overflow float32)")
    return DecodeResult(gradient, loc.liars, erasures)


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
