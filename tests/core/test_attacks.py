"""Adversary strategies: exact formulas, determinism, dtype preservation, argument checks."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.core.attacks import ATTACKS, alie_z, make_attack
from draco.errors import ConfigError

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
OWN = np.array([1.5, -2.0, 0.25, 4.0], dtype=np.float32)
# Honest payloads of three other workers; per column: mean (3, 6, 0, -1), no ties.
H = np.array(
    [[1.0, 2.0, -1.0, 0.0], [3.0, 6.0, 0.5, -4.0], [5.0, 10.0, 0.5, 1.0]], dtype=np.float32
)


def _apply(
    name: str,
    own: np.ndarray = OWN,
    honest: np.ndarray | None = H,
    seed: int = 0,
    n: int = 7,
    s: int = 2,
    **params: float,
) -> np.ndarray:
    attack = make_attack(name, **params)
    return attack.apply(
        own,
        rng=np.random.default_rng(seed),
        honest=honest if attack.omniscient else None,
        n_workers=n,
        n_adversaries=s,
    )


def test_registry_names_and_flags() -> None:
    assert ATTACKS == (
        "constant",
        "reverse",
        "gaussian",
        "sign_flip",
        "alie",
        "ipm",
        "label_flip",
        "colluding",
        "sparse",
    )
    omniscient = {name for name in ATTACKS if make_attack(name).omniscient}
    assert omniscient == {"alie", "ipm", "colluding"}
    assert [name for name in ATTACKS if make_attack(name).data_attack] == ["label_flip"]
    assert all(make_attack(name).name == name for name in ATTACKS)


def test_constant() -> None:
    np.testing.assert_array_equal(_apply("constant"), np.full(4, -100.0, np.float32))
    np.testing.assert_array_equal(_apply("constant", value=3.5), np.full(4, 3.5, np.float32))


def test_reverse() -> None:
    np.testing.assert_array_equal(_apply("reverse"), np.array([-150, 200, -25, -400], np.float32))
    np.testing.assert_array_equal(_apply("reverse", scale=2.0), 2 * OWN)


def test_sign_flip() -> None:
    np.testing.assert_array_equal(_apply("sign_flip"), -OWN)


def test_label_flip_returns_own_unchanged() -> None:
    out = _apply("label_flip")
    np.testing.assert_array_equal(out, OWN)
    assert out.dtype == OWN.dtype


def test_ipm() -> None:
    np.testing.assert_allclose(_apply("ipm"), [-0.3, -0.6, 0.0, 0.1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_apply("ipm", eps=2.0), [-6.0, -12.0, 0.0, 2.0], rtol=1e-6)


def test_alie_z_formula() -> None:
    # Baruch et al.: s = floor(n/2 + 1) - f, z = Phi^-1((n - s)/n)
    assert alie_z(50, 12) == pytest.approx(NormalDist().inv_cdf(36 / 50))
    assert alie_z(50, 12) == pytest.approx(0.5828415, abs=1e-6)
    assert alie_z(7, 2) == pytest.approx(NormalDist().inv_cdf(5 / 7))  # s = 4 - 2 = 2
    assert alie_z(45, 5) == pytest.approx(NormalDist().inv_cdf(27 / 45))  # s = 23 - 5 = 18
    with pytest.raises(ConfigError, match="alie"):
        alie_z(10, 6)  # s = 0: the liars already hold a majority


def test_alie_values() -> None:
    mu = H.astype(np.float64).mean(axis=0)
    sd = H.astype(np.float64).std(axis=0)  # population std
    np.testing.assert_allclose(_apply("alie"), mu - alie_z(7, 2) * sd, rtol=1e-6)
    # explicit z; column 0: 3 - 1 * sqrt(8/3)
    out = _apply("alie", z=1.0)
    assert out[0] == pytest.approx(3.0 - np.sqrt(8.0 / 3.0), rel=1e-6)


def test_colluding_is_the_negated_median_and_identical_for_all_liars() -> None:
    np.testing.assert_array_equal(_apply("colluding"), np.array([-3, -6, -0.5, -0.0], np.float32))
    other_own = np.array([9.0, 9.0, 9.0, 9.0], np.float32)
    a = _apply("colluding", own=other_own, honest=H[::-1].copy(), seed=5)
    np.testing.assert_array_equal(a, _apply("colluding"))


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    complex_payload=st.booleans(),
)
def test_colluding_vectors_are_bit_identical_whatever_the_row_order(
    m: int, seed: int, complex_payload: bool
) -> None:
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((m, 33)).astype(np.float32)
    if complex_payload:
        honest = (honest + 1j * rng.standard_normal((m, 33))).astype(np.complex64)
    own_a, own_b = rng.standard_normal((2, 33)).astype(honest.dtype)
    perm = rng.permutation(m)
    a = _apply("colluding", own=own_a, honest=honest, seed=1)
    b = _apply("colluding", own=own_b, honest=honest[perm], seed=2)
    assert a.tobytes() == b.tobytes()


def test_gaussian_is_deterministic_given_the_rng() -> None:
    a = _apply("gaussian", seed=3)
    np.testing.assert_array_equal(a, _apply("gaussian", seed=3))
    assert not np.array_equal(a, _apply("gaussian", seed=4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_statistics(dtype: type) -> None:
    own: np.ndarray = np.zeros(40_000, dtype=dtype)
    out = _apply("gaussian", own=own, honest=None, seed=11, sigma=3.0)
    assert out.dtype == dtype
    # E|x|^2 = sigma^2 per coordinate for real and complex payloads alike
    assert np.mean(np.abs(out) ** 2) == pytest.approx(9.0, rel=0.03)
    assert abs(np.mean(out)) < 0.1
    if np.iscomplexobj(out):
        assert np.var(out.real) == pytest.approx(4.5, rel=0.05)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_keeps_dtype_and_shape(name: str, dtype: type) -> None:
    rng = np.random.default_rng(7)
    own: np.ndarray = rng.standard_normal(10).astype(dtype)
    honest: np.ndarray = rng.standard_normal((4, 10)).astype(dtype)
    if np.iscomplexobj(own):
        own = own + 1j * rng.standard_normal(10).astype(dtype)
        honest = honest + 1j * rng.standard_normal((4, 10)).astype(dtype)
    out = _apply(name, own=own, honest=honest, seed=9)
    assert out.shape == own.shape and out.dtype == own.dtype
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, _apply(name, own=own, honest=honest, seed=9))


def test_complex_formulas_act_on_real_and_imaginary_parts() -> None:
    own = np.array([1 + 2j, -3 + 0.5j], dtype=np.complex64)
    honest = np.array([[1 + 1j, 2 - 2j], [3 + 5j, 4 + 2j], [8 - 1j, 0 + 0j]], dtype=np.complex64)
    np.testing.assert_array_equal(_apply("reverse", own=own, honest=None), -100 * own)
    np.testing.assert_array_equal(_apply("constant", own=own, honest=None), [-100, -100])
    np.testing.assert_allclose(
        _apply("ipm", own=own, honest=honest), -0.1 * honest.mean(axis=0), rtol=1e-6
    )
    # median of the real parts (1, 3, 8) and of the imaginary parts (1, 5, -1)
    np.testing.assert_array_equal(
        _apply("colluding", own=own, honest=honest), [-(3 + 1j), -(2 + 0j)]
    )
    re, im = honest.real.astype(np.float64), honest.imag.astype(np.float64)
    z = alie_z(7, 2)
    expected = (re.mean(0) - z * re.std(0)) + 1j * (im.mean(0) - z * im.std(0))
    np.testing.assert_allclose(_apply("alie", own=own, honest=honest), expected, rtol=1e-6)


def test_make_attack_rejects_unknown_names_and_params() -> None:
    with pytest.raises(ConfigError, match="unknown attack"):
        make_attack("bribe")
    with pytest.raises(ConfigError, match="no parameter"):
        make_attack("constant", scale=2.0)
    with pytest.raises(ConfigError):
        make_attack("gaussian", sigma=-1.0)
    with pytest.raises(ConfigError):
        make_attack("reverse", scale=float("nan"))
    assert make_attack("ipm", eps=0.5).params() == {"eps": 0.5}


def test_apply_checks_its_inputs() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="omniscient"):
        make_attack("alie").apply(OWN, rng=rng, n_workers=7, n_adversaries=2)
    with pytest.raises(ConfigError, match="shape"):
        make_attack("ipm").apply(OWN, rng=rng, honest=H[:, :3], n_workers=7, n_adversaries=2)
    with pytest.raises(ConfigError):
        make_attack("constant").apply(np.arange(4), rng=rng, n_workers=7, n_adversaries=2)
    with pytest.raises(ConfigError):
        make_attack("constant").apply(OWN, rng=rng, n_workers=3, n_adversaries=4)


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_sparse_adds_value_on_count_coordinates_shared_by_colluders(dtype: type) -> None:
    own = np.arange(1000, dtype=dtype)
    attack = make_attack("sparse", count=7, value=3.5)
    a = attack.apply(own, rng=np.random.default_rng(1), n_workers=5, n_adversaries=2)
    b = attack.apply(own * 2, rng=np.random.default_rng(2), n_workers=5, n_adversaries=2)
    changed_a = np.flatnonzero(a != own)
    assert changed_a.size == 7 and np.all((a - own)[changed_a] == 3.5)
    assert np.array_equal(changed_a, np.flatnonzero(b != own * 2))  # same coordinates
    c = make_attack("sparse", count=7, shared=False).apply(
        own, rng=np.random.default_rng(3), n_workers=5, n_adversaries=2
    )
    assert not np.array_equal(np.flatnonzero(c != own), changed_a)


@pytest.mark.parametrize(
    "params", [{"count": 0}, {"count": 1.5}, {"value": float("nan")}, {"shared": "yes"}]
)
def test_sparse_rejects_bad_parameters(params: dict) -> None:
    with pytest.raises(ConfigError):
        make_attack("sparse", **params)


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_apply_all_equals_apply_per_liar_bit_for_bit(name: str, dtype: type) -> None:
    # d spans several column blocks of the blocked statistics, with a ragged last block.
    d = 2 * 8192 + 77
    rng = np.random.default_rng(3)
    honest = rng.standard_normal((6, d)).astype(np.float32)
    owns = list(rng.standard_normal((3, d)).astype(np.float32))
    if dtype is np.complex64:
        honest = (honest + 1j * rng.standard_normal((6, d))).astype(np.complex64)
        owns = [(o + 1j * o[::-1]).astype(np.complex64) for o in owns]
    attack = make_attack(name)
    kw = dict(honest=honest if attack.omniscient else None, n_workers=9, n_adversaries=3)
    together = attack.apply_all(owns, rngs=[np.random.default_rng(10 + i) for i in range(3)], **kw)
    one_by_one = [
        attack.apply(own, rng=np.random.default_rng(10 + i), **kw) for i, own in enumerate(owns)
    ]
    assert [a.tobytes() for a in together] == [b.tobytes() for b in one_by_one]
    assert all(a.dtype == dtype and a.shape == (d,) for a in together)


def test_blocked_alie_is_bitwise_the_unblocked_formula() -> None:
    d = 3 * 8192 + 5
    honest = np.random.default_rng(4).standard_normal((40, d)).astype(np.float32)
    z = alie_z(45, 5)
    expected = honest.mean(axis=0, dtype=np.float64) - z * honest.std(axis=0, dtype=np.float64)
    got = _apply("alie", own=honest[0], honest=honest, n=45, s=5)
    assert got.tobytes() == expected.astype(np.float32).tobytes()


def test_apply_all_checks_its_inputs() -> None:
    attack = make_attack("alie")
    with pytest.raises(ConfigError, match="generators"):
        attack.apply_all(
            [OWN, OWN], rngs=[np.random.default_rng(0)], honest=H, n_workers=7, n_adversaries=2
        )
    with pytest.raises(ConfigError, match="omniscient"):
        attack.apply_all([OWN], rngs=[np.random.default_rng(0)], n_workers=7, n_adversaries=2)
    assert attack.apply_all([], rngs=[], honest=H, n_workers=7, n_adversaries=2) == []
