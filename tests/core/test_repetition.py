"""Repetition code: group layout, exact and tolerance votes, erasures, readiness."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.core.codes import RepetitionCode, make_code
from draco.errors import DecodeError

KINDS = ("nan", "inf", "huge", "zero", "copy", "collude", "random", "shape", "dtype", "same")


def honest_payloads(code: RepetitionCode, grads: np.ndarray) -> dict[int, np.ndarray]:
    return {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(code.n_workers)}


def group_sum(code: RepetitionCode, honest: dict[int, np.ndarray]) -> np.ndarray:
    """The honest sum computed the decoder's way: group values added in group order (float32)."""
    total = honest[code.groups[0][0]].copy()
    for g in code.groups[1:]:
        total += honest[g[0]]
    return total


def lie(
    kind: str, j: int, honest: dict[int, np.ndarray], rng: np.random.Generator, shared: np.ndarray
) -> np.ndarray:
    own = honest[j]
    d = own.size
    if kind == "nan":
        out = own.copy()
        out[rng.integers(d)] = np.nan
        return out
    if kind == "inf":
        return np.full(d, np.inf, np.float32)
    if kind == "huge":
        return np.full(d, 1e30, np.float32)
    if kind == "zero":
        return np.zeros(d, np.float32)
    if kind == "copy":
        return honest[int(rng.integers(len(honest)))].copy()
    if kind == "collude":
        return shared.copy()
    if kind == "random":
        return rng.standard_normal(d).astype(np.float32)
    if kind == "shape":
        return np.zeros(d + 1, np.float32)
    if kind == "dtype":
        return own.astype(np.float64)
    return own.copy()  # "same": a liar that sends its honest payload is not located


@pytest.mark.parametrize(
    "n,s", [(3, 1), (7, 1), (8, 1), (11, 2), (14, 3), (45, 5), (46, 5), (9, 0)]
)
def test_groups_layout(n: int, s: int) -> None:
    code = make_code("repetition", n, s)
    assert isinstance(code, RepetitionCode)
    sizes = [len(g) for g in code.groups]
    assert min(sizes) >= 2 * s + 1 and max(sizes) - min(sizes) <= 1
    assert sorted(j for g in code.groups for j in g) == list(range(n))
    assert code.n_partitions == n and code.redundancy == min(sizes)
    assert code.assignment.shape == (n, n) and code.assignment.dtype == bool
    for j in range(n):
        assert tuple(np.flatnonzero(code.assignment[j])) == code.partitions_of(j)
        assert j in code.partitions_of(j)
    # every partition is computed by exactly the members of one group
    assert (code.assignment.sum(axis=0) == [len(code.partitions_of(k)) for k in range(n)]).all()


def test_encode_is_the_ordered_float32_sum() -> None:
    code = make_code("repetition", 7, 1)  # two groups: 4 + 3
    grads = np.random.default_rng(0).standard_normal((7, 9)).astype(np.float32)
    y = code.encode(0, grads[list(code.partitions_of(0))])
    expected = ((grads[0] + grads[1]) + grads[2]) + grads[3]
    assert y.dtype == np.float32 and np.array_equal(y, expected)


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(3, 16),
    s_frac=st.floats(0, 1),
    d=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    kinds=st.lists(st.sampled_from(KINDS), min_size=8, max_size=8),
)
def test_any_s_liars_decode_exactly(
    n: int, s_frac: float, d: int, seed: int, kinds: list[str]
) -> None:
    s = int(s_frac * (n - 1) // 2)
    code = make_code("repetition", n, s)
    assert isinstance(code, RepetitionCode)
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((n, d)).astype(np.float32)
    honest = honest_payloads(code, grads)
    t = int(rng.integers(0, s + 1))
    liars = [int(j) for j in rng.choice(n, t, replace=False)]
    shared = rng.standard_normal(d).astype(np.float32)
    received = dict(honest)
    for i, j in enumerate(liars):
        received[j] = lie(kinds[i % len(kinds)], j, honest, rng, shared)
    result = code.decode(received)
    assert result.gradient.dtype == np.float32
    assert np.array_equal(result.gradient, group_sum(code, honest))
    changed = {
        j
        for j in liars
        if not (
            received[j].dtype == np.float32
            and received[j].shape == (d,)
            and received[j].tobytes() == honest[j].tobytes()
        )
    }
    unusable = {
        j
        for j in changed
        if received[j].dtype != np.float32
        or received[j].shape != (d,)
        or not np.isfinite(received[j]).all()
    }
    assert result.erasures == frozenset(unusable)
    assert result.adversaries == frozenset(changed - unusable)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(3, 16),
    s_frac=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
    n_missing=st.integers(0, 8),
)
def test_erasures_inside_and_outside_budget(
    n: int, s_frac: float, seed: int, n_missing: int
) -> None:
    s = int(s_frac * (n - 1) // 2)
    code = make_code("repetition", n, s)
    assert isinstance(code, RepetitionCode)
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((n, 4)).astype(np.float32)
    honest = honest_payloads(code, grads)
    missing = {int(j) for j in rng.choice(n, min(n_missing, n), replace=False)}
    liars = {
        int(j)
        for j in rng.choice(
            sorted(set(range(n)) - missing) or [0], min(s, n - len(missing)), replace=False
        )
    } - missing
    colluding = rng.standard_normal(4).astype(np.float32)
    received = {
        j: (colluding.copy() if j in liars else honest[j]) for j in range(n) if j not in missing
    }
    # Decodable iff every group keeps >= s+1 honest payloads (the liars cannot reach s+1).
    inside = all(
        sum(1 for j in g if j not in missing and j not in liars) >= s + 1 for g in code.groups
    )
    assert code.ready(received) == inside
    if inside:
        result = code.decode(received)
        assert np.array_equal(result.gradient, group_sum(code, honest))
        assert result.erasures == frozenset(missing) and result.adversaries == frozenset(liars)
    else:
        with pytest.raises(DecodeError, match="group"):
            code.decode(received)


def test_unequal_groups_and_early_ready() -> None:
    code = make_code("repetition", 11, 2)  # groups of 6 and 5 (11 = 2*5 + 1)
    assert isinstance(code, RepetitionCode)
    assert [len(g) for g in code.groups] == [6, 5]
    grads = np.random.default_rng(3).standard_normal((11, 5)).astype(np.float32)
    honest = honest_payloads(code, grads)
    partial = {j: honest[j] for j in (0, 1, 2, 6, 7)}  # 3 + 2 copies
    assert not code.ready(partial)
    partial[8] = honest[8]
    assert code.ready(partial)  # s+1 = 3 identical copies in each group
    result = code.decode(partial)
    assert np.array_equal(result.gradient, honest[0] + honest[6])
    assert result.erasures == frozenset({3, 4, 5, 9, 10})


def test_group_with_agreed_nan_is_a_decode_error() -> None:
    code = make_code("repetition", 3, 1)
    payloads = {j: np.full(4, np.nan, np.float32) for j in range(3)}
    with pytest.raises(DecodeError, match=r"groups \[0\] agree on a gradient containing NaN"):
        code.decode(payloads)
    code = make_code("repetition", 6, 1)  # groups {0,1,2} and {3,4,5}
    payloads = {j: np.full(4, 3e38, np.float32) for j in range(6)}
    with pytest.raises(DecodeError, match="overflows float32"):
        code.decode(payloads)


def test_tolerance_vote() -> None:
    rng = np.random.default_rng(7)
    n, s, d = 10, 2, 20
    exact = make_code("repetition", n, s)
    tol = make_code("repetition", n, s, rtol=1e-5)
    assert isinstance(exact, RepetitionCode) and isinstance(tol, RepetitionCode)
    assert tol.options == {"rtol": 1e-5}
    grads = rng.standard_normal((n, d)).astype(np.float32)
    honest = honest_payloads(exact, grads)
    # heterogeneous hosts: every honest payload differs from the others by ~1e-7 relative
    received = {
        j: (v * (1 + 1e-7 * rng.standard_normal(d))).astype(np.float32) for j, v in honest.items()
    }
    liars = {1, 7}
    received[1] = honest[1] * np.float32(1.01)  # 1e-2 relative: outside the tolerance
    received[7] = np.full(d, -100, np.float32)
    with pytest.raises(DecodeError):
        exact.decode(received)
    assert tol.ready(received) and not exact.ready(received)
    result = tol.decode(received)
    truth = group_sum(exact, honest)
    assert np.max(np.abs(result.gradient - truth)) <= 3e-5 * np.max(np.abs(truth))
    assert result.adversaries == frozenset(liars) and not result.erasures
    # a tolerance cluster of s+1 liars is not possible; s liars close together cannot win
    received2 = dict(received)
    received2[0] = received2[1] = np.full(d, 5, np.float32)
    assert np.allclose(
        tol.decode(received2).gradient, truth, rtol=0, atol=3e-5 * np.max(np.abs(truth))
    )
