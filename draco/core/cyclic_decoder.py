"""The cyclic code's decoder: locate on secret projections, recover, check every coordinate.

Numerics and measured accuracy: ``docs/numerics.md`` (made by
``benchmarks/cyclic_numerics.py``).

.. [CWCP18] L. Chen, H. Wang, Z. Charles, D. Papailiopoulos, "DRACO: Byzantine-resilient
   Distributed Training via Redundant Gradients", ICML 2018, section 5.
.. [Fre97] R. Freivalds' randomised check, in R. Motwani, P. Raghavan, *Randomized
   Algorithms*, section 7.1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from draco.core.decoder_types import CyclicDecoderConfig, DecodeResult, all_finite, well_formed
from draco.core.locator import locate_cyclic
from draco.core.projection import PROJECTIONS, SAMPLE_BLOCK, project_rows
from draco.core.weights import check_weights, decoder_weights
from draco.errors import DecodeError

__all__ = ["decode_cyclic"]

#: Coordinates per block of the recovery pass (``_recover``): 40 complex64 rows of a block
#: take 5 MB, staged once and read back from cache by the gemv. Measured at n = 45,
#: d = 1,033,510 (whole pass): 4096: 24.6 ms, 8192: 21.2, 16384: 19.3, 32768: 24.3.
_RECOVERY_BLOCK = 1 << 14
#: Payloads with at least this many projection chunks are located on a secret random sample
#: of 1 / _SAMPLE_FRACTION of the chunks; the recovery pass then checks the kept rows on all
#: coordinates (``decode_cyclic``).
_SAMPLE_MIN_BLOCKS = 8
_SAMPLE_FRACTION = 8
#: Step 2e corrects at most 1 / this of the recovery blocks (a lie spread wider than that
#: takes the full path: re-projecting most blocks would cost as much).
_MAX_FLAGGED_FRACTION = 8
# Step 2e maps recovery blocks into projection blocks: one must hold whole ones.
assert (SAMPLE_BLOCK * PROJECTIONS) % _RECOVERY_BLOCK == 0
#: Bound on (rows summed in the payload precision before each float64 accumulation) x
#: (recovery amplification) in ``_recover``. Payload rounding dominates the error: with s
#: liars adjacent on the circle, d = 131072, complex64, relative error of the sum for
#: budgets 16 / 256 / unbounded: n=45, s=5 (amplification 3.3): 5.7e-8 / 7.8e-8 / 7.8e-8;
#: n=57, s=20 (18): 1.3e-7 / 1.7e-7 / 1.7e-7. 256 keeps n = 45 in one gemv per block.
_GROUP_BUDGET = 256.0


def recovery_block(dtype: np.dtype | type) -> int:
    """Coordinates per block of ``_recover`` for payloads of ``dtype`` (the same bytes per
    staged row for complex64 and complex128: cache-sized)."""
    return _RECOVERY_BLOCK if np.dtype(dtype) == np.complex64 else _RECOVERY_BLOCK // 2


def _recover(
    rows: Mapping[int, np.ndarray],
    weights: np.ndarray,
    d: int,
    delta: np.ndarray | None = None,
    blocks: Sequence[int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, float | None, np.ndarray]:
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

    With ``blocks`` (indices of blocks of ``recovery_block`` coordinates) only those blocks
    are computed, into ``out`` (the rest of ``out`` is left as it is).

    Returns
    -------
    gradient : ndarray, shape (d,), float32
        ``out`` when given.
    check : float or None (without ``delta``)
        ||delta^T Y_kept||_2 over the computed coordinates; non-finite when a kept payload
        holds NaN/Inf.
    parity : ndarray, shape (blocks of d,), float64
        Each block's share of check^2 (zeros without ``delta`` and for blocks not computed).
    """
    if out is None:
        out = np.empty(d, dtype=np.float32)
    keys = [j for j in sorted(rows) if weights[j] != 0]
    dtype = np.result_type(*(rows[j].dtype for j in keys)) if keys else np.complex64
    block = recovery_block(dtype)
    parity = np.zeros(-(-d // block))
    starts = range(0, d, block) if blocks is None else [b * block for b in blocks]
    if not keys:
        for start in starts:
            out[start : start + block] = 0.0
        return out, (0.0 if delta is not None else None), parity
    arrays = [rows[j].astype(dtype, copy=False) for j in keys]
    vectors = [weights[keys].astype(dtype)]
    if delta is not None:
        vectors.append(delta[keys].astype(dtype))
    amplification = float(np.sqrt(weights.size) * np.linalg.norm(weights))
    group = max(1, min(len(keys), int(_GROUP_BUDGET // max(amplification, 1.0))))
    bounds = [(g, min(len(keys), g + group)) for g in range(0, len(keys), group)]
    staging = np.empty((len(keys), min(d, block)), dtype=dtype)
    acc = np.empty(staging.shape[1], dtype=np.complex128)
    for start in starts:
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
                parity[start // block] = float(np.vdot(u, u).real)
    check = float(np.sqrt(np.sum(parity))) if delta is not None else None
    return out, check, parity


@dataclass(frozen=True)
class _Recovered:
    """One recovery pass of the fast path: its result and how to judge its check."""

    gradient: np.ndarray  # (d,) float32
    parity: np.ndarray  # (blocks,) each block's share of check^2
    limit: float  # the check passes while sqrt(sum of parity) is <= this
    liars: frozenset[int]
    erasures: frozenset[int]
    unread: frozenset[int]  # rows of ``arrays`` the recovery pass did not read (left out)


def _sample_recovery(
    nodes: np.ndarray,
    s: int,
    arrays: Mapping[int, np.ndarray],
    d: int,
    rng: np.random.Generator,
    config: CyclicDecoderConfig,
    blocks: Sequence[int],
    energy: Mapping[int, float] | None = None,
    recover: Sequence[int] | None = None,
    out: np.ndarray | None = None,
) -> tuple[_Recovered, dict[int, float]] | None:
    """Steps 2a-c: project ``arrays`` on the projection ``blocks``, locate, recover.

    ``recover``: only these recovery blocks, into ``out`` (step 2e). ``energy``: the rows'
    energies over all coordinates (estimated from this sample when None). Returns the
    pass and the energies, or None when the sample cannot be decoded (go to the full path).
    """
    n = nodes.size
    sample = project_rows(arrays, d, rng, blocks).finite()
    erasures = frozenset(range(n)) - frozenset(sample.z)
    if len(erasures) > 2 * s:
        return None
    loc = locate_cyclic(nodes, s, sample, erasures, config)
    bad = sorted(erasures | loc.excluded)
    if not (loc.within_budget and loc.residual <= config.factor and len(bad) < 2 * s):
        return None
    w, expected = decoder_weights(nodes, s, bad, config)
    if expected > config.max_error:
        return None
    delta = check_weights(nodes, s, bad, rng, float(np.linalg.norm(w)))
    kept = {j: arrays[j] for j in sample.z if j not in bad}
    if energy is None:
        scale = d / max(sample.coordinates, 1)
        energy = {j: float(np.sum(sample.energy[j][:PROJECTIONS])) * scale for j in sample.z}
    gradient, _, parity = _recover(kept, w, d, delta, recover, out)
    e = np.array([energy.get(j, 0.0) if j in kept else 0.0 for j in range(n)])
    limit = config.check_factor * config.check_unit * float(np.sqrt(np.abs(delta) ** 2 @ e))
    read = {j for j in kept if w[j] != 0}
    unread = frozenset(arrays) - erasures - read
    return _Recovered(gradient, parity, limit, loc.liars, erasures, unread), dict(energy)


def _with_nonfinite_erased(
    gradient: np.ndarray,
    liars: frozenset[int],
    erasures: frozenset[int],
    arrays: Mapping[int, np.ndarray],
    unread: frozenset[int],
) -> DecodeResult:
    """The fast path's result, with the rows it left unread that hold NaN/Inf as erasures.

    The recovery pass read every kept row (a NaN/Inf there makes it non-finite, and the
    fast path gives up), and a row whose sampled projection is non-finite is an erasure
    already; but a row left out (located on the sample, or weight 0) is never read in
    full: one with NaN/Inf outside the sample would be named a liar, where the full path
    (and a PS that screens payloads on arrival) erases it. Reads only those rows (<= 2s).
    """
    nonfinite = frozenset(j for j in unread if not all_finite(arrays[j]))
    return DecodeResult(gradient, liars - nonfinite, erasures | nonfinite)


def _without_nonfinite_rows(
    arrays: Mapping[int, np.ndarray], rec: _Recovered
) -> dict[int, np.ndarray] | None:
    """``arrays`` without the rows that made ``rec``'s check non-finite, or None.

    Only the recovery blocks whose check is non-finite are read, in the rows the pass read
    (at most 1 / _MAX_FLAGGED_FRACTION of the blocks, else None: the full path is as cheap).
    Erasing those rows and running the pass again gives the decode the PS got when it
    dropped NaN/Inf payloads on arrival: the same kept rows and weights, so the same sum bit
    for bit (a redo of the dead blocks only, as in step 2e, would use other weights there).
    None also when no row is non-finite there (finite values overflowed).
    """
    dead = np.flatnonzero(~np.isfinite(rec.parity))
    if not dead.size or dead.size > max(1, rec.parity.size // _MAX_FLAGGED_FRACTION):
        return None
    block = recovery_block(np.result_type(*(a.dtype for a in arrays.values())))
    read = frozenset(arrays) - rec.erasures - rec.unread
    bad = {
        j for j in read if any(not all_finite(arrays[j][b * block : (b + 1) * block]) for b in dead)
    }
    if not bad:
        return None
    return {j: a for j, a in arrays.items() if j not in bad}


def _fast_path(
    nodes: np.ndarray,
    s: int,
    arrays: Mapping[int, np.ndarray],
    d: int,
    rng: np.random.Generator,
    config: CyclicDecoderConfig,
) -> DecodeResult | None:
    """Step 2 of ``decode_cyclic``; None: take the full path."""
    n_blocks = -(-(d // PROJECTIONS) // SAMPLE_BLOCK)
    if n_blocks < _SAMPLE_MIN_BLOCKS:
        return None
    size = max(1, n_blocks // _SAMPLE_FRACTION)
    blocks = sorted(int(b) for b in rng.choice(n_blocks, size, replace=False))
    first = _sample_recovery(nodes, s, arrays, d, rng, config, blocks)
    if first is None:
        return None
    rec, energy = first
    if not np.isfinite(rec.gradient).all() or not np.isfinite(rec.parity).all():
        # A kept row holds NaN/Inf where the sample did not look (the PS does not screen
        # payloads): erase the rows non-finite in those blocks and run a-c again.
        retry = _without_nonfinite_rows(arrays, rec)
        if retry is None:
            return None
        arrays = retry
        first = _sample_recovery(nodes, s, arrays, d, rng, config, blocks)
        if first is None:
            return None
        rec, energy = first
        if not np.isfinite(rec.gradient).all() or not np.isfinite(rec.parity).all():
            return None
    # Step 2d.
    if float(np.sqrt(np.sum(rec.parity))) <= rec.limit:
        return _with_nonfinite_erased(rec.gradient, rec.liars, rec.erasures, arrays, rec.unread)
    # Step 2e: the lie sits in a few blocks the sample missed (a sparse lie).
    order = np.argsort(-rec.parity, kind="stable")
    rest = np.cumsum(rec.parity[order][::-1])[::-1]  # rest[i]: parity of order[i:]
    flagged = int(np.argmax(np.append(rest, 0.0) <= (rec.limit / 2) ** 2))
    if flagged > max(1, rec.parity.size // _MAX_FLAGGED_FRACTION):
        return None
    redo = sorted(int(b) for b in order[:flagged])
    # The projection blocks (SAMPLE_BLOCK x K coordinates, a multiple of the recovery
    # block) that hold the blocks to redo.
    block = recovery_block(np.result_type(*(a.dtype for a in arrays.values())))
    coverage = sorted({b * block // (SAMPLE_BLOCK * PROJECTIONS) for b in redo})
    usable = {j: a for j, a in arrays.items() if j not in rec.erasures}
    # The redone blocks are written into the first pass's gradient in place: if the redo
    # fails, the full path computes a new one and this one is dropped.
    second = _sample_recovery(
        nodes, s, usable, d, rng, config, coverage, energy, redo, rec.gradient
    )
    if second is None:
        return None
    fix = second[0]
    if not np.isfinite(fix.gradient).all() or float(np.sqrt(np.sum(fix.parity))) > fix.limit:
        return None
    # Rows read by the first pass were finite (it was); the second reads a subset of them;
    # rows erased by ``_without_nonfinite_rows`` are not in ``arrays``: erasures already.
    return _with_nonfinite_erased(
        fix.gradient, rec.liars | fix.liars, rec.erasures | fix.erasures, arrays, rec.unread
    )


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
          outside the sample, a failed check, nothing left to check) go on with e.;
       e. a lie in a few blocks the sample missed (a sparse lie): the blocks whose share of
          the check is largest, fewest first until the rest passes at half the limit, are
          redone (at most 1 / _MAX_FLAGGED_FRACTION of them): locate again on the
          projection blocks that hold them (a-b on those blocks only), recover just those
          blocks with the new weights and check them with a new secret delta against the
          whole rows' bound. Any recovery weights give the sum on consistent rows, so a
          block's rows need only be honest in that block. Otherwise (the lie is spread,
          the new location or check fails) fall through to the full path.
          Sound: what is returned was checked on every coordinate.
    3. Full path: project every usable payload over all coordinates (``project_rows``);
       non-finite projections (NaN/Inf) are erasures.
    4. Locate the liars (``locate_cyclic``: PGZ locator, refits, self-check).
    5. Recovery weights over all presumed-honest rows (``decoder_weights``: the float64
       minimum-norm ones, or, when the bad rows cluster on the circle, regularised ones
       computed in long double). Refuse when the expected relative error
       (``expected_error``: payload rounding x sqrt(n) ||w|| plus the weights' own error)
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
        arr = well_formed(received.get(j), dtype)
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
    fast = _fast_path(nodes, s, arrays, d, rng, config)
    if fast is not None:
        return fast
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
    w, expected = decoder_weights(nodes, s, bad, config)
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
    gradient, _, _ = _recover(honest, w, d)
    # Step 6.
    if not np.isfinite(gradient).all():
        raise DecodeError("cyclic decode produced non-finite values (payloads overflow float32)")
    return DecodeResult(gradient, loc.liars, erasures)
