"""Aggregators on hand-computed vectors, against brute-force references, and their checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.core import aggregators as A
from draco.errors import ConfigError

# Five 2-D rows, no ties in any column.
X5 = np.array([[1.0, 10.0], [2.0, 0.0], [4.0, -3.0], [7.0, 5.0], [100.0, -50.0]])


# --- coordinate-wise rules -------------------------------------------------------------


def test_mean_hand_computed() -> None:
    np.testing.assert_allclose(A.mean(X5), [114 / 5, -38 / 5])


def test_median_odd_and_even_hand_computed() -> None:
    np.testing.assert_array_equal(A.median(X5), [4.0, 0.0])
    # even n: mean of the two middle values (numpy's convention)
    np.testing.assert_array_equal(A.median(X5[:4]), [3.0, 2.5])


@pytest.mark.parametrize("n", [1, 2, 5, 6, 45])
def test_median_matches_numpy_bit_for_bit(n: int) -> None:
    X = np.random.default_rng(n).standard_normal((n, 257)).astype(np.float32)
    out = A.median(X)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.median(X, axis=0))


def test_trimmed_mean_hand_computed() -> None:
    np.testing.assert_allclose(A.trimmed_mean(X5, 1), [13 / 3, 2 / 3])
    np.testing.assert_allclose(A.trimmed_mean(X5, 2), [4.0, 0.0])
    np.testing.assert_allclose(A.trimmed_mean(X5, 0), A.mean(X5))


def test_trimmed_mean_needs_2f_plus_1_rows() -> None:
    with pytest.raises(ConfigError, match="2f\\+1"):
        A.trimmed_mean(X5, 3)


# --- Krum family -------------------------------------------------------------------------

# Squared distances of P (before the shift): p0-p1 1, p0-p2 6.25, p0-p3 18, p1-p2 7.25,
# p1-p3 13, p2-p3 9.25; p4 is thousands away from everyone.
SHIFT = np.array([1.0, -2.0])
P = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.5], [3.0, 3.0], [50.0, 50.0]]) + SHIFT


def test_squared_distances_hand_computed() -> None:
    D = A.squared_distances(P)
    assert D[0, 1] == pytest.approx(1.0)
    assert D[0, 2] == pytest.approx(6.25)
    assert D[1, 3] == pytest.approx(13.0)
    assert D[2, 3] == pytest.approx(9.25)
    assert D[3, 4] == pytest.approx(2 * 47.0**2)
    assert np.all(np.diag(D) == 0) and np.allclose(D, D.T)


def test_squared_distances_survive_a_large_common_offset() -> None:
    # Rows 1e6 away from the origin but 1e-2 from each other: centring avoids cancellation.
    rng = np.random.default_rng(3)
    X = 1e6 + 1e-2 * rng.standard_normal((6, 1000))
    ref = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(A.squared_distances(X), ref, rtol=1e-6)


def test_krum_picks_the_hand_computed_row() -> None:
    # n-f-2 = 2 nearest: scores p0 7.25, p1 8.25, p2 13.5, p3 22.25 -> p0
    np.testing.assert_allclose(A.krum(P, 1), P[0])
    # n-f-1 = 3 nearest: p0 25.25, p1 21.25, p2 22.75, p3 40.25 -> p1
    np.testing.assert_allclose(A.krum(P, 1, neighbours="n-f-1"), P[1])


def test_krum_scores_hand_computed() -> None:
    scores = A.krum_scores(A.squared_distances(P), 1)
    np.testing.assert_allclose(scores[:4], [7.25, 8.25, 13.5, 22.25])


def test_krum_ignores_a_far_liar_cluster() -> None:
    rng = np.random.default_rng(0)
    honest = rng.standard_normal((8, 50))
    X = np.vstack([honest, np.full((3, 50), -100.0)])
    out = A.krum(X, 3)
    assert any(np.array_equal(out, h) for h in honest)


def test_multi_krum_hand_computed() -> None:
    # m = n - f = 4 best scores: p0..p3
    np.testing.assert_allclose(A.multi_krum(P, 1), P[:4].mean(axis=0))
    np.testing.assert_allclose(A.multi_krum(P, 1, m=2), [0.5 + 1.0, 0.0 - 2.0])
    np.testing.assert_allclose(A.multi_krum(P, 1, m=1), A.krum(P, 1))


@pytest.mark.parametrize("rule", [A.krum, A.multi_krum])
def test_krum_family_needs_2f_plus_3_rows(rule: A.Aggregator) -> None:
    with pytest.raises(ConfigError, match="2f\\+3"):
        rule(P, 2)
    with pytest.raises(ConfigError, match="neighbours"):
        rule(P, 1, neighbours="n-f")


def test_multi_krum_rejects_bad_m() -> None:
    with pytest.raises(ConfigError):
        A.multi_krum(P, 1, m=6)
    with pytest.raises(ConfigError):
        A.multi_krum(P, 1, m=0)


# --- Bulyan ------------------------------------------------------------------------------


def _bulyan_reference(X: np.ndarray, f: int) -> np.ndarray:
    """Straight from the paper, with loops: iterated Krum, then beta closest to the median."""
    n = X.shape[0]
    remaining = list(range(n))
    selected: list[int] = []
    for _ in range(n - 2 * f):
        k = max(len(remaining) - f - 2, 0)
        best, best_score = -1, math.inf
        for i in remaining:
            ds = sorted(float(np.sum((X[i] - X[j]) ** 2)) for j in remaining if j != i)
            score = sum(ds[:k])
            if score < best_score - 1e-9:
                best, best_score = i, score
        selected.append(best)
        remaining.remove(best)
    S = X[sorted(selected)]
    beta = S.shape[0] - 2 * f
    out = np.empty(X.shape[1])
    for c in range(X.shape[1]):
        col = S[:, c]
        med = np.median(col)
        best_set = min(
            itertools.combinations(range(len(col)), beta),
            key=lambda idx: sum(abs(col[i] - med) for i in idx),
        )
        out[c] = np.mean(col[list(best_set)])
    return out


def test_bulyan_hand_computed_1d() -> None:
    # Selection (n-f-2 neighbours among the remaining): 2, then 4, then 1, then 6 (tie with 10
    # broken by the lower index), then 0 -> {0, 1, 2, 4, 6}. Median 2; the windows {0,1,2}
    # and {1,2,4} tie at total distance 3; the lower one wins: mean 1.
    x = np.array([[0.0], [1.0], [2.0], [4.0], [6.0], [10.0], [-40.0]])
    np.testing.assert_allclose(A.bulyan(x, 1), [1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulyan_matches_the_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, f = 11, 2
    X = rng.standard_normal((n, 6))
    X[:f] += rng.choice([-20.0, 20.0], size=(f, 6))
    np.testing.assert_allclose(A.bulyan(X, f), _bulyan_reference(X, f), rtol=1e-12)


def test_bulyan_requires_4f_plus_3_rows() -> None:
    X = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ConfigError, match="4f\\+3"):
        A.bulyan(X, 2)  # needs 11
    assert A.bulyan(X[:7], 1).shape == (3,)
    with pytest.raises(ConfigError, match="4f\\+3"):
        A.bulyan(X[:6], 1)


def test_bulyan_keeps_float32() -> None:
    X = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    assert A.bulyan(X, 1).dtype == np.float32


# --- geometric median --------------------------------------------------------------------


def _weiszfeld_reference(X: np.ndarray, iters: int = 200_000) -> np.ndarray:
    """Plain Weiszfeld in the original space, float64, to a 1e-15 relative step."""
    z = X.mean(axis=0)
    for _ in range(iters):
        d = np.linalg.norm(X - z, axis=1)
        w = 1.0 / d
        new = (w @ X) / w.sum()
        if np.linalg.norm(new - z) <= 1e-15 * np.linalg.norm(X - X.mean(axis=0)):
            return new
        z = new
    return z


def test_geometric_median_of_a_convex_quadrilateral_is_the_diagonals_crossing() -> None:
    Q = np.array([[0.0, 0.0], [4.0, 0.0], [5.0, 3.0], [1.0, 2.0]])
    info = A.geometric_median_with_info(Q, tol=1e-10)
    assert info.converged and info.iterations >= 1
    np.testing.assert_allclose(info.median, [40 / 19, 24 / 19], atol=1e-8)


def test_geometric_median_of_collinear_points_is_their_1d_median() -> None:
    # A data point is the optimum: exercises the Vardi-Zhang step.
    u = np.array([3.0, 4.0, 0.0]) / 5.0
    t = np.array([0.0, 1.0, 5.0, 7.0, 100.0])
    X = t[:, None] * u + np.array([1.0, -1.0, 2.0])
    info = A.geometric_median_with_info(X)
    assert info.converged
    np.testing.assert_allclose(info.median, X[2], atol=1e-6)


def test_geometric_median_majority_of_identical_rows() -> None:
    rng = np.random.default_rng(5)
    p = rng.standard_normal(20)
    X = np.vstack([p, p, p, rng.standard_normal((2, 20)) * 50])
    np.testing.assert_allclose(A.geometric_median(X), p, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_geometric_median_matches_a_high_precision_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((9, 6)) * rng.uniform(0.5, 3.0, size=6)
    X[:2] += 30.0
    ref = _weiszfeld_reference(X)
    info = A.geometric_median_with_info(X, tol=1e-10)
    assert info.converged
    spread = math.sqrt(np.mean(np.sum((X - X.mean(axis=0)) ** 2, axis=1)))
    assert np.linalg.norm(info.median - ref) <= 1e-7 * spread
    assert info.objective == pytest.approx(np.linalg.norm(X - ref, axis=1).sum(), rel=1e-12)
    np.testing.assert_allclose(info.weights.sum(), 1.0)
    # First-order optimality: the unit vectors towards the points cancel out.
    units = (X - info.median) / np.linalg.norm(X - info.median, axis=1)[:, None]
    assert np.linalg.norm(units.sum(axis=0)) < 1e-5


def test_geometric_median_reports_non_convergence_and_iterations() -> None:
    rng = np.random.default_rng(2)
    X = rng.standard_normal((7, 5))
    capped = A.geometric_median_with_info(X, max_iter=1)
    assert capped.iterations == 1 and not capped.converged
    loose = A.geometric_median_with_info(X, tol=1e-2)
    tight = A.geometric_median_with_info(X, tol=1e-9)
    assert loose.converged and tight.converged
    assert 1 <= loose.iterations < tight.iterations


def test_geometric_median_float32_and_identical_rows() -> None:
    X = np.random.default_rng(4).standard_normal((5, 64)).astype(np.float32)
    assert A.geometric_median(X).dtype == np.float32
    same = np.tile(X[:1], (4, 1))
    info = A.geometric_median_with_info(same)
    assert info.iterations == 0 and info.converged
    np.testing.assert_array_equal(info.median, X[0])


# --- centered clipping -------------------------------------------------------------------

C3 = np.array([[3.0, 4.0], [0.0, 1.0], [-6.0, -8.0]])


def test_centered_clipping_hand_computed() -> None:
    # norms 5, 1, 10 with tau = 2 -> factors 0.4, 1, 0.2 -> (1.2, 1.6), (0, 1), (-1.2, -1.6)
    # atol: the first coordinate is 0 up to rounding (2.8e-17 with numpy 2.4).
    np.testing.assert_allclose(
        A.centered_clipping(C3, tau=2.0, iters=1), [0.0, 1.0 / 3.0], atol=1e-15
    )
    # tau larger than every distance: plain mean
    np.testing.assert_allclose(A.centered_clipping(C3, tau=100.0), C3.mean(axis=0))


def test_centered_clipping_iterates_from_the_given_center() -> None:
    center = np.array([1.0, 1.0])
    v = center.copy()
    for _ in range(3):
        diff = C3 - v
        norms = np.linalg.norm(diff, axis=1)
        v = v + np.mean(diff * np.minimum(1.0, 2.0 / norms)[:, None], axis=0)
    out = A.centered_clipping(C3, tau=2.0, iters=3, center=center)
    np.testing.assert_allclose(out, v, rtol=1e-12)
    # the coordinate-wise median of C3 is (0, 1)
    np.testing.assert_array_equal(
        A.centered_clipping(C3, tau=1.0, center="median"),
        A.centered_clipping(C3, tau=1.0, center=np.array([0.0, 1.0])),
    )


def test_centered_clipping_row_at_the_center_is_kept() -> None:
    # Row 0 sits at the center (distance 0, factor 1); row 1 at distance 10 is clipped to 2.
    X = np.array([[1.0, 1.0], [7.0, 9.0]])
    out = A.centered_clipping(X, tau=2.0, center=np.array([1.0, 1.0]))
    np.testing.assert_allclose(out, [1.0 + 0.5 * 1.2, 1.0 + 0.5 * 1.6])


def test_centered_clipping_rejects_bad_options() -> None:
    with pytest.raises(ConfigError):
        A.centered_clipping(C3, tau=0.0)
    with pytest.raises(ConfigError):
        A.centered_clipping(C3, iters=0)
    with pytest.raises(ConfigError):
        A.centered_clipping(C3, center="nowhere")
    with pytest.raises(ConfigError):
        A.centered_clipping(C3, center=np.zeros(3))


# --- registry and input checks -----------------------------------------------------------


def test_aggregate_passes_f_only_where_taken() -> None:
    assert A.aggregate("mean", X5, 99).tolist() == A.mean(X5).tolist()
    np.testing.assert_allclose(A.aggregate("trimmed_mean", X5, 1), [13 / 3, 2 / 3])
    np.testing.assert_allclose(A.aggregate("multi_krum", P, 1, m=2), [1.5, -2.0])
    assert A.takes_f("krum") and not A.takes_f("geometric_median")
    assert set(A.AGGREGATORS) == {
        "mean",
        "median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "bulyan",
        "geometric_median",
        "centered_clipping",
    }


def test_aggregate_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ConfigError, match="unknown aggregator"):
        A.aggregate("mode", X5, 1)
    with pytest.raises(ConfigError, match="no option"):
        A.aggregate("median", X5, 1, m=3)


@pytest.mark.parametrize("name", sorted(A.AGGREGATORS))
def test_bad_shapes_and_f_raise_config_error(name: str) -> None:
    with pytest.raises(ConfigError):
        A.aggregate(name, np.zeros(5), 1)
    with pytest.raises(ConfigError):
        A.aggregate(name, np.zeros((0, 3)), 0)
    with pytest.raises(ConfigError):
        A.aggregate(name, np.zeros((3, 2), dtype=np.complex64), 0)
    if A.takes_f(name):
        with pytest.raises(ConfigError):
            A.aggregate(name, np.zeros((5, 2)), -1)
        with pytest.raises(ConfigError):
            A.aggregate(name, np.zeros((5, 2)), 5)


@pytest.mark.parametrize("name", sorted(A.AGGREGATORS))
def test_float32_in_float32_out_and_integers_accepted(name: str) -> None:
    X = np.random.default_rng(9).standard_normal((11, 8)).astype(np.float32)
    assert A.aggregate(name, X, 2).dtype == np.float32
    assert A.aggregate(name, X.astype(np.int64), 2).dtype == np.float64


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(7, 15),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_robust_rules_stay_inside_the_honest_range(n: int, d: int, seed: int) -> None:
    # With f liars far away, every coordinate-wise robust output stays within the honest
    # rows' per-coordinate range.
    f = (n - 3) // 4
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((n - f, d))
    X = np.vstack([np.full((f, d), 1e4), honest])
    lo, hi = honest.min(axis=0) - 1e-9, honest.max(axis=0) + 1e-9
    for name in ("median", "trimmed_mean", "krum", "multi_krum", "bulyan"):
        out = A.aggregate(name, X, f, **({"m": n - 2 * f} if name == "multi_krum" else {}))
        assert np.all((lo <= out) & (out <= hi)), name
