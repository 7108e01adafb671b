"""The no-redundancy baseline "none": interface, erasures, aggregation and scaling."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from draco.core.baseline import UncodedCode
from draco.errors import ConfigError, DecodeError

N, S, D = 7, 2, 5


def _grads(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)


def _payloads(code: UncodedCode, grads: np.ndarray) -> dict[int, np.ndarray]:
    return {j: code.encode(j, grads[list(code.partitions_of(j))]) for j in range(N)}


def test_interface() -> None:
    code = UncodedCode(N, S)
    assert code.name == "none"
    assert (code.n_workers, code.n_adversaries, code.n_partitions, code.redundancy) == (N, S, N, 1)
    assert code.payload_dtype == np.float32
    np.testing.assert_array_equal(code.assignment, np.eye(N, dtype=bool))
    assert code.assignment.dtype == bool
    assert [code.partitions_of(j) for j in range(N)] == [(j,) for j in range(N)]
    assert code.options == {"aggregator": "mean"}


def test_options_rebuild_the_same_code_and_are_msgpack_able() -> None:
    code = UncodedCode(N, S, aggregator="multi_krum", m=3, neighbours="n-f-1")
    opts = msgpack.unpackb(msgpack.packb(code.options))
    again = UncodedCode(N, S, **opts)
    assert again.options == code.options
    grads = _grads(1)
    a = code.decode(_payloads(code, grads)).gradient
    np.testing.assert_array_equal(a, again.decode(_payloads(again, grads)).gradient)


def test_encode_returns_a_float32_copy() -> None:
    code = UncodedCode(N, S)
    g = np.arange(D, dtype=np.float64)[None, :]
    y = code.encode(3, g)
    assert y.dtype == np.float32 and y.shape == (D,)
    y[0] = 99
    assert g[0, 0] == 0
    with pytest.raises(ConfigError):
        code.encode(3, np.zeros((2, D), np.float32))
    with pytest.raises(ConfigError):
        code.encode(N, np.zeros((1, D), np.float32))


def test_mean_decode_is_the_sum_of_partitions() -> None:
    code = UncodedCode(N, S)
    grads = _grads()
    result = code.decode(_payloads(code, grads))
    assert result.gradient.dtype == np.float32 and result.gradient.shape == (D,)
    np.testing.assert_allclose(result.gradient, grads.sum(axis=0), rtol=1e-5, atol=1e-6)
    assert result.adversaries == frozenset() and result.erasures == frozenset()


def test_median_decode_hand_computed() -> None:
    code = UncodedCode(5, 1, aggregator="median")
    rows = np.array([[1, 10], [2, 0], [4, -3], [7, 5], [100, -50]], dtype=np.float32)
    result = code.decode({j: rows[j] for j in range(5)})
    np.testing.assert_array_equal(result.gradient, np.array([4, 0], np.float32) * 5)


def test_erasures_missing_wrong_shape_dtype_and_non_finite() -> None:
    code = UncodedCode(N, S, aggregator="median")
    grads = _grads(2)
    received = _payloads(code, grads)
    del received[0]
    received[1] = received[1][:-1]  # wrong shape
    received[2] = received[2].astype(np.float64)  # wrong dtype
    received[3] = received[3].copy()
    received[3][1] = np.nan
    received[4] = received[4].copy()
    received[4][0] = np.inf
    received[99] = grads[0]  # not a worker: ignored
    result = code.decode(received)
    assert result.erasures == frozenset({0, 1, 2, 3, 4})
    # median of the two usable rows (5, 6) = their mean, times n_partitions
    np.testing.assert_allclose(result.gradient, grads[5:7].mean(axis=0) * N, rtol=1e-6)


def test_mean_ignores_erased_rows_but_not_liars() -> None:
    code = UncodedCode(N, S)
    grads = _grads(3)
    received = _payloads(code, grads)
    received[6] = np.full(D, np.nan, np.float32)
    received[5] = np.full(D, -100.0, np.float32)  # a liar: the mean has no defence
    expected = (grads[:5].sum(axis=0) - 100.0) / 6 * N
    np.testing.assert_allclose(code.decode(received).gradient, expected, rtol=1e-5)


def test_too_few_payloads_raise_decode_error() -> None:
    code = UncodedCode(N, S, aggregator="trimmed_mean")  # needs 2f+1 = 5 rows
    received = _payloads(code, _grads())
    for j in range(3):
        del received[j]
    with pytest.raises(DecodeError, match="too few"):
        code.decode(received)
    with pytest.raises(DecodeError, match="no usable"):
        UncodedCode(N, S).decode({})


def test_ready_needs_every_worker() -> None:
    code = UncodedCode(N, S)
    received = _payloads(code, _grads())
    assert code.ready(received)
    del received[4]
    assert not code.ready(received)


def test_f_option_overrides_n_adversaries() -> None:
    code = UncodedCode(N, 1, aggregator="trimmed_mean", f=3)
    rows = np.arange(N, dtype=np.float32)[:, None] ** 2  # 0 1 4 9 16 25 36 -> keeps 9
    np.testing.assert_array_equal(code.decode(dict(enumerate(rows))).gradient, [9.0 * N])
    assert code.options == {"aggregator": "trimmed_mean", "f": 3}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggregator": "mode"},
        {"aggregator": "median", "m": 3},
        {"aggregator": "median", "f": 1},
        {"aggregator": "bulyan"},  # n = 7 < 4*2+3
        {"aggregator": "krum", "f": 3},  # n = 7 < 2*3+3
        {"aggregator": "centered_clipping", "tau": -1.0},
        {"aggregator": "centered_clipping", "center": np.zeros(D)},
    ],
)
def test_bad_configurations_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        UncodedCode(N, S, **kwargs)


def test_bad_sizes_raise_config_error() -> None:
    with pytest.raises(ConfigError):
        UncodedCode(0, 0)
    with pytest.raises(ConfigError):
        UncodedCode(3, 3)


@pytest.mark.parametrize(
    "aggregator",
    ["median", "trimmed_mean", "krum", "multi_krum", "geometric_median", "bulyan"],
)
def test_robust_rules_resist_two_liars(aggregator: str) -> None:
    n, s = 11, 2
    code = UncodedCode(n, s, aggregator=aggregator)
    rng = np.random.default_rng(4)
    honest = (1.0 + 0.01 * rng.standard_normal((n, 50))).astype(np.float32)
    received = {j: code.encode(j, honest[j : j + 1]) for j in range(n)}
    received[0] = np.full(50, -100.0, np.float32)
    received[7] = np.full(50, 1e6, np.float32)
    out = code.decode(received).gradient / n
    assert np.all(np.abs(out - 1.0) < 0.05)


def test_make_code_none_builds_an_uncoded_code_that_meets_the_protocol() -> None:
    from draco.core.codes import Code, make_code

    code = make_code("none", N, S, aggregator="geometric_median", tol=1e-6)
    assert isinstance(code, UncodedCode) and isinstance(code, Code)
    assert code.options == {"aggregator": "geometric_median", "tol": 1e-6}
    grads = _grads(6)
    result = code.decode(_payloads(code, grads))
    assert result.gradient.shape == (D,) and result.adversaries == frozenset()


# --- centered clipping keeps its state across rounds (Karimireddy, He, Jaggi 2021) ---------


def test_centered_clipping_uses_worker_momentum_and_the_previous_aggregate() -> None:
    from draco.core.aggregators import centered_clipping

    n, d, beta, tau = 5, 3, 0.9, 0.5
    code = UncodedCode(n, 1, aggregator="centered_clipping", tau=tau, momentum=beta)
    rng = np.random.default_rng(7)
    rounds = [rng.standard_normal((n, d)).astype(np.float32) for _ in range(3)]
    m = np.zeros((n, d), np.float32)
    v = np.zeros(d, np.float32)
    for X in rounds:
        m = (np.float32(1 - beta) * X + np.float32(beta) * m).astype(np.float32)
        v = centered_clipping(m, tau=tau, center=v)
        got = code.decode({j: X[j] for j in range(n)}).gradient / n
        np.testing.assert_allclose(got, v, rtol=1e-5, atol=1e-6)


def test_centered_clipping_state_round_trips_through_a_checkpoint() -> None:
    n, d = 5, 4
    rng = np.random.default_rng(8)
    rounds = [rng.standard_normal((n, d)).astype(np.float32) for _ in range(4)]
    a = UncodedCode(n, 1, aggregator="centered_clipping", tau=0.3)
    for X in rounds[:2]:
        a.decode({j: X[j] for j in range(n)})
    b = UncodedCode(n, 1, aggregator="centered_clipping", tau=0.3)
    b.load_state_dict(a.state_dict())
    for X in rounds[2:]:
        ga = a.decode({j: X[j] for j in range(n)}).gradient
        gb = b.decode({j: X[j] for j in range(n)}).gradient
        np.testing.assert_array_equal(ga, gb)
    fresh = UncodedCode(n, 1, aggregator="centered_clipping", tau=0.3)
    assert not np.array_equal(fresh.decode({j: rounds[3][j] for j in range(n)}).gradient, ga)


def test_centered_clipping_stateless_options_and_bad_momentum() -> None:
    code = UncodedCode(3, 1, aggregator="centered_clipping", momentum=0.0, center="zero")
    X = np.array([[1.0], [2.0], [3.0]], np.float32)
    for _ in range(2):  # the same answer every round: no state
        np.testing.assert_allclose(code.decode(dict(enumerate(X))).gradient, [6.0])
    with pytest.raises(ConfigError):
        UncodedCode(3, 1, aggregator="centered_clipping", momentum=1.0)
