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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from draco.errors import DecodeError

__all__ = [
    "CyclicDecoderConfig",
    "DecodeResult",
    "bitwise_equal",
    "decode_cyclic",
    "decode_repetition",
    "locate_cyclic",
    "project_rows",
    "recovery_weights",
    "repetition_ready",
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
    stop_early: bool = False,
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
       gradient: no winner (the caller raises DecodeError).
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
                value = arrays[cand]
                if stop_early:
                    return _GroupVote(value, frozenset(cls), frozenset(unusable))
                if not np.isfinite(value).all():  # Step 4.
                    return _GroupVote(None, frozenset(), frozenset(unusable | set(cls)))
                return _GroupVote(value, frozenset(cls), frozenset(unusable))
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
    for members in groups:
        if _vote_group(members, received, s, rtol, stop_early=True).winner is None:
            return False
    return True


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
    for w in winners[1:]:
        total += w
    return DecodeResult(total, frozenset(adversaries), frozenset(erasures))


# ---------------------------------------------------------------------------------------------
# Cyclic code: secret projection, errors-and-erasures location, least-squares recovery
# ---------------------------------------------------------------------------------------------

#: Coordinates per float32 partial dot product in ``project_rows``; partials are summed in
#: float64. Bounds the float32 accumulation error (measured ~2e-6 relative at 2**15).
_PROJECTION_CHUNK = 1 << 16
#: Number of secret projections per decode (coordinates i = k mod K go to projection k).
PROJECTIONS = 8
#: Block size of the recovery product (keeps the float32 accumulator in cache).
_RECOVERY_CHUNK = 1 << 16


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
    clear_factor, power : float
        A suspect is cleared (reported honest) only if its projection is within
        ``clear_factor`` standard deviations of the codeword predicted from the other rows
        AND that prediction is sharp: its standard deviation is <= ``power`` x the typical
        honest |z| (else a lie of 0.1% of the payload could hide in it).
    huge : float
        A projection more than ``huge`` x the (s+1)-th largest one is set aside before the
        locator runs (it would swamp the syndromes in float64); it must still be found
        inconsistent to be named a liar.
    """

    noise_floor: float = 2e-7
    noise_growth: float = 2e-8
    factor: float = 50.0
    clear_factor: float = 5.0
    power: float = 1e-3
    huge: float = 1e6

    def relative_noise(self, d: int) -> float:
        """The relative noise level of a projection of d-coordinate payloads."""
        rows = min(-(-d // PROJECTIONS), max(1, _PROJECTION_CHUNK // PROJECTIONS))
        return self.noise_floor + self.noise_growth * float(np.sqrt(rows))


def project_rows(
    rows: Mapping[int, np.ndarray], d: int, rng: np.random.Generator
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
    out: dict[int, np.ndarray] = {}
    for j, y in rows.items():
        real = y.view(np.float32 if y.dtype == np.complex64 else np.float64)
        acc = np.zeros(2 * k)
        if m:
            mat = real[: 2 * head].reshape(m, 2 * k)
            for start in range(0, m, step):
                stop = min(m, start + step)
                acc += r[start:stop].astype(mat.dtype, copy=False) @ mat[start:stop]
        for t in range(d - head):
            acc[2 * t : 2 * t + 2] += r_tail[t] * real[2 * (head + t) : 2 * (head + t) + 2]
        out[j] = acc[0::2] + 1j * acc[1::2]
    return out


def _poly_from_roots(roots: np.ndarray) -> np.ndarray:
    """Coefficients c_0..c_k (lowest first) of prod_i (1 - roots_i x)."""
    c = np.array([1.0 + 0j])
    for root in roots:
        c = np.concatenate([c, [0j]]) - root * np.concatenate([[0j], c])
    return c


@dataclass(frozen=True)
class _Location:
    liars: frozenset[int]  # suspects shown to lie (reported)
    excluded: frozenset[int]  # every suspect: left out of the recovery (liars included)
    residual: float  # normalised consistency residual (<= factor when consistent)
    within_budget: bool  # 2 * len(excluded) + erasures <= 2s


def _check_rows(
    nodes: np.ndarray,
    n_check: int,
    z: Mapping[int, np.ndarray],
    excluded: Sequence[int],
    nu: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit the code to the projections outside ``excluded``; predict the excluded ones.

    Steps (least squares over the kept rows, written with syndromes so that the excluded
    rows' values never enter the arithmetic, however huge they are):

    1. S~_q = sum_{j kept} z_j x_j^q, q = 1..n_check, for every projection (the kept rows'
       syndromes; a codeword has S_q = 0 for q = 1..2s).
    2. Solve V e = S~ in the least-squares sense, V[q, i] = x_i^q for i in ``excluded``:
       e is the error that zeroing the excluded rows introduced, so the codeword's value
       there is c_i = -e_i. Its noise: nu sqrt(n_kept) ||row i of pinv(V)||.
    3. Residual ||S~ - V e|| / (nu sqrt(n_kept (n_check - |excluded|))), worst projection:
       the kept rows' inconsistency in noise units; O(1) when consistent, large when a kept
       row lies.

    Returns
    -------
    predicted : ndarray, shape (len(excluded), K), complex128
    noise : ndarray, shape (len(excluded), K)
        Standard deviation of each prediction from the kept rows' noise.
    residual : float
    """
    q = np.arange(1, n_check + 1)
    ex = list(excluded)
    exset = set(ex)
    kept = [j for j in z if j not in exset]
    zk = np.array([z[j] for j in kept]).reshape(len(kept), nu.size)
    syn = (nodes[kept][None, :] ** q[:, None]) @ zk  # (n_check, K)
    syn_noise = nu * np.sqrt(max(len(kept), 1))  # (K,)
    if ex:
        vm = nodes[ex][None, :] ** q[:, None]
        # Householder QR: the residual S~ - Q Q^H S~ is backward stable whatever the
        # conditioning of V (clustered nodes), unlike S~ - V e with a large, inaccurate e.
        qm, _ = np.linalg.qr(vm)
        res = syn - qm @ (qm.conj().T @ syn)
        pinv = np.linalg.pinv(vm)
        e = pinv @ syn
        noise = np.linalg.norm(pinv, axis=1)[:, None] * syn_noise[None, :]
    else:
        e = np.zeros((0, nu.size), complex)
        noise = np.zeros((0, nu.size))
        res = syn
    dof = max(n_check - len(ex), 1)
    residual = float(np.max(np.linalg.norm(res, axis=0) / (syn_noise * np.sqrt(dof))))
    return -e, noise, residual


def _projected_sum(
    nodes: np.ndarray, s: int, z: Mapping[int, np.ndarray], bad: set[int] | frozenset[int]
) -> tuple[np.ndarray, float]:
    """(sum_j w_j z_j for every projection, ||w||_2) with ``recovery_weights`` excluding ``bad``."""
    w = recovery_weights(nodes, s, sorted(bad))
    keys = [j for j in z if j not in bad]
    zk = np.array([z[j] for j in keys])
    return w[keys] @ zk, float(np.linalg.norm(w))


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
       Rows with |z_j| > config.huge x (the (s+1)-th largest |z|) are set aside as suspects
       (at most s rows can exceed every honest row); they would swamp the float64 syndromes.
    2. Syndromes S_q = sum_j z_j x_j^q, q = 1..2s, over the usable rows not set aside. A
       codeword (polynomial of degree < n-2s at all n-th roots of unity) has S_q = 0; what
       remains is sum_{i bad} e_i x_i^q.
    3. Erasure locator Gamma(x) = prod_{i in E} (1 - x_i x) over the erasures and set-aside
       rows, epsilon = deg Gamma; Forney's modified syndromes
       Xi_q = sum_k Gamma_k S_{q-k}, q = epsilon+1..2s, no longer see them.
    4. Error locator sigma of degree tau = floor((2s - epsilon) / 2): the null vector of the
       Toeplitz system sum_k sigma_k Xi_{q-k} = 0, q = epsilon+tau+1..2s (Peterson-
       Gorenstein-Zierler), taken as the right singular vector of the smallest singular value.
    5. Chien search: rank the usable rows by |sigma(1 / x_j)| (a relative ranking, not an
       absolute threshold: the locator's scale is arbitrary and noisy).
    6. Suspects = set-aside rows + the b best-ranked rows, b = tau first. ALL suspects are
       left out of the recovery (as in design.md section 4: excluding an honest row costs a
       little noise amplification, keeping a liar costs the sum). A suspect is reported
       honest only when the codeword predicted from the other rows pins its value down
       (prediction std <= config.power x typical |z|), its projection agrees with that
       prediction (within config.clear_factor std), and the kept rows stay consistent with
       it put back. Otherwise it is reported as a liar. Why not a plain threshold: a run of
       liars adjacent on the circle leaves a gap in which single rows cannot be predicted
       from complex64 payloads (the prediction's std can exceed the payload itself), while
       the set as a whole is located exactly by the error locator. Consequence: an honest
       suspect inside such a gap (only possible when fewer than tau workers lie) is
       reported as a liar; a liar is never reported honest unless its lie is below 0.1% x
       config.clear_factor of the payload scale, and it is excluded from the sum anyway.
    7. Self-check: the kept rows (all but erasures and suspects) must be consistent
       (normalised residual <= config.factor) and 2 |liars| + |erasures| <= 2s; otherwise
       retry step 6 with b = 2s - epsilon (every row the budget allows; a noisy locator may
       rank a liar just below tau). If both fail, report the failure (the caller raises).
    """
    usable = sorted(z)
    zs = np.array([z[j] for j in usable])  # (m, K)
    mags = np.abs(zs)
    # Step 1. Per-projection noise level; guard against all-zero honest payloads.
    # One level for all projections: a projection can be small by cancellation while its
    # rounding error is not (it scales with sum_i |r_i y_i|, i.e. with the typical |z|).
    level = float(np.median(np.sqrt(np.mean(mags**2, axis=1))))  # typical honest |z|
    nu = np.full(mags.shape[1], noise * level if level > 0 else 1e-300)
    size = np.linalg.norm(mags / nu[None, :], axis=1)
    order = np.argsort(-size, kind="stable")
    ref = size[order[min(s, len(usable) - 1)]]
    aside = [usable[i] for i in order[:s] if size[i] > config.huge * ref]
    known = sorted(erasures) + aside
    eps = len(known)
    if eps > 2 * s:
        return _Location(frozenset(aside), frozenset(aside), np.inf, False)
    tau = (2 * s - eps) // 2
    aside_set = set(aside)
    clean = [j for j in usable if j not in aside_set]
    ranked: list[int] = []
    if tau > 0:
        # Step 2. syn[q - 1, k] = S_q of projection k.
        q = np.arange(1, 2 * s + 1)
        zc = np.array([z[j] for j in clean])
        syn = (nodes[clean][None, :] ** q[:, None]) @ zc
        # Step 3. xi[m - eps - 1, k] = Xi_m.
        gamma = _poly_from_roots(nodes[known])
        xi = np.array(
            [
                sum(gamma[k] * syn[m - k - 1] for k in range(eps + 1))
                for m in range(eps + 1, 2 * s + 1)
            ]
        )
        # Step 4. Rows m = eps+tau+1..2s, columns k = 0..tau: Xi_{m-k}; one block per
        # projection (they share the error locator), each scaled to unit norm.
        blocks = []
        for p in range(xi.shape[1]):
            block = np.array(
                [
                    [xi[m - k - eps - 1, p] for k in range(tau + 1)]
                    for m in range(eps + tau + 1, 2 * s + 1)
                ]
            )
            norm = np.linalg.norm(block)
            if norm > 0:
                blocks.append(block / norm)
        if blocks:
            _, _, vh = np.linalg.svd(np.vstack(blocks))
            sigma = vh[-1].conj()
            # Step 5. sigma(1/x) = sum_k sigma_k x^-k.
            vals = np.abs(np.polynomial.polynomial.polyval(1.0 / nodes[clean], sigma))
            ranked = [clean[i] for i in np.argsort(vals, kind="stable")]
    best = _Location(frozenset(aside), frozenset(aside), np.inf, False)
    for b in sorted({tau, 2 * s - eps}):
        # Step 6.
        suspects = aside + ranked[:b]
        excluded = sorted(erasures) + suspects
        predicted, pred_noise, residual = _check_rows(nodes, 2 * s, z, excluded, nu)
        offset = len(erasures)
        liars: set[int] = set()
        for i, j in enumerate(suspects):
            spread = pred_noise[offset + i] + nu  # (K,) std of the prediction and of z_j
            deviation = float(np.max(np.abs(z[j] - predicted[offset + i]) / spread))
            cleared = (
                deviation <= config.clear_factor and float(np.max(spread)) <= config.power * level
            )
            if cleared:
                trial = sorted(erasures | (set(suspects) - {j}))
                cleared = _check_rows(nodes, 2 * s, z, trial, nu)[2] <= config.factor
            if not cleared:
                liars.add(j)
        # Step 7.
        loc = _Location(
            frozenset(liars),
            frozenset(suspects),
            residual,
            2 * len(liars) + len(erasures) <= 2 * s and len(suspects) + len(erasures) <= 2 * s,
        )
        if loc.within_budget and residual <= config.factor:
            return loc
        if best.residual == np.inf:
            best = loc
    return best


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
        q = np.arange(1, 2 * s + 1)
        a = nodes[bad][:, None] ** q[None, :]
        beta, *_ = np.linalg.lstsq(a, np.full(len(bad), -1.0 / n, dtype=complex), rcond=None)
        w = w + (nodes[:, None] ** q[None, :]) @ beta
        w[bad] = 0.0
    return w


def _recover(rows: Mapping[int, np.ndarray], w: np.ndarray, d: int) -> np.ndarray:
    """Re(sum_j w_j y_j) as float32, accumulated in float64 blockwise (cache-sized blocks).

    float64 accumulation: with liars or erasures the weights w_j are larger than 1/n and the
    terms cancel; a float32 accumulator would add about 6e-8 x ``gap_amplification``.

    Re(w y) = Re(w) Re(y) - Im(w) Im(y): one (block, 2) x (2,) product per row and block on
    the interleaved float view of the complex payload.
    """
    out = np.empty(d, dtype=np.float32)
    acc = np.empty(min(d, _RECOVERY_CHUNK), dtype=np.float64)
    items = [(j, y) for j, y in rows.items() if w[j] != 0]
    coef: dict[int, np.ndarray] = {
        j: np.array(
            [w[j].real, -w[j].imag], dtype=np.float32 if y.dtype == np.complex64 else np.float64
        )
        for j, y in items
    }
    flats: dict[int, np.ndarray] = {
        j: y.view(np.float32 if y.dtype == np.complex64 else np.float64).reshape(d, 2)
        for j, y in items
    }
    for start in range(0, d, _RECOVERY_CHUNK):
        stop = min(d, start + _RECOVERY_CHUNK)
        block = acc[: stop - start]
        block[:] = 0.0
        for j, _ in items:
            block += np.matmul(flats[j][start:stop], coef[j])
        out[start:stop] = block
    return out


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
    2. Project every usable payload on a fresh secret random vector (``project_rows``);
       non-finite projections (NaN/Inf in the payload) are erasures.
    3. Locate the liars on the projections (``locate_cyclic``: syndromes, erasure locator,
       Forney's modified syndromes, PGZ error locator, Chien search, refit, self-check).
    4. Recovery weights over all presumed-honest rows (``recovery_weights``), then one pass
       over the payloads: gradient = Re(sum_j w_j y_j) (``_recover``).
    5. Check the result is finite.

    Raises
    ------
    DecodeError
        More erasures than 2s, or an inconsistent self-check (more liars than the budget
        allows), or a non-finite result.
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
    # Step 2.
    z = project_rows(arrays, d, rng)
    usable = {j: v for j, v in z.items() if np.isfinite(v).all()}
    erasures = frozenset(range(n)) - frozenset(usable)
    if len(erasures) > 2 * s:
        raise DecodeError(
            f"{len(erasures)} of {n} workers missing or unusable ({sorted(erasures)}): the "
            f"cyclic code with s={s} corrects 2*errors + erasures <= {2 * s}. Wait for more "
            f"workers (raise the round timeout)."
        )
    # Step 3.
    loc = locate_cyclic(nodes, s, usable, erasures, config, config.relative_noise(d))
    if not (loc.within_budget and loc.residual <= config.factor):
        raise DecodeError(
            f"cyclic decode failed its self-check (residual {loc.residual:.3g} noise units "
            f"after removing liars {sorted(loc.liars)} and erasures {sorted(erasures)}): "
            f"the payloads are beyond the budget 2*liars + erasures <= 2s = {2 * s}. Wait "
            f"for more workers or run with a larger s."
        )
    # Step 4.
    bad = sorted(erasures | loc.excluded)
    w = recovery_weights(nodes, s, bad)
    honest = {j: arrays[j] for j in usable if j not in loc.excluded}
    gradient = _recover(honest, w, d)
    # Step 5.
    if not np.isfinite(gradient).all():
        raise DecodeError("cyclic decode produced non-finite values (payloads overflow float32)")
    return DecodeResult(gradient, loc.liars, erasures)
