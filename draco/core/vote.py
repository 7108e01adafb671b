"""The repetition code's decoder: an exact (bytewise) or tolerance majority vote per group.

Every partition is computed by the >= 2s + 1 workers of its group; honest members send
bit-identical payloads, so the PS takes the payload a majority of the group agrees on and
names the members that sent anything else [CWCP18, section 4].

.. [CWCP18] L. Chen, H. Wang, Z. Charles, D. Papailiopoulos, "DRACO: Byzantine-resilient
   Distributed Training via Redundant Gradients", ICML 2018.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from draco.core.decoder_types import DecodeResult, all_finite, well_formed
from draco.errors import DecodeError

__all__ = ["bitwise_equal", "decode_repetition", "repetition_ready", "sum_group_values"]


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
        arr = well_formed(received.get(j), np.dtype(np.float32))
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
    whatever the missing workers would send; a winner holding NaN/Inf is not ready (the
    decode would fail). Cost: a per-group count, then at most one byte comparison per
    received payload (exact vote), then one read of each group's winner.
    """
    for members in groups:
        if sum(1 for j in members if j in received) < s + 1:
            return False
    winners = []
    for members in groups:
        winner = _vote_group(members, received, s, rtol).winner
        if winner is None:
            return False
        winners.append(winner)
    # A non-finite winner (honest workers agreeing on NaN/Inf) makes ``decode_repetition``
    # fail: not ready, so the round waits as it would have if the PS had erased NaN/Inf
    # payloads on arrival (it no longer reads them there). One read per group, and only
    # once every group has a winner.
    return all(all_finite(w) for w in winners)


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
            if p.shape != vote.winner.shape or not all_finite(p):
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
