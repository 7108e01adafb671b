"""Robust statistics per coordinate, and the input checks every aggregation rule shares.

The rules here treat each of the d coordinates on its own: ``mean``, ``median`` and
``trimmed_mean`` map the stacked payloads ``X`` of shape (n, d) (one row per worker) to one
vector of shape (d,). Real floating input keeps its dtype (float32 in, float32 out); integer
or bool input is computed in float64. The helpers (``as_matrix``, ``check_f``, ...) are the
checks and column blocking of every rule in ``draco.core.aggregators``: a user's mistake
(wrong shape, f too large for n, a bad option value) raises ``draco.errors.ConfigError``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from draco.errors import ConfigError

# Elements per block of columns when streaming over X (Gram matrices, distances, Bulyan's
# coordinate phase): _BLOCK_ELEMS / n columns, a 4 MB float64 buffer that stays in cache
# (about 11,650 columns at n = 45; measured fastest here among 4096..65536 columns).
_BLOCK_ELEMS = 1 << 19


# ----------------------------------------------------------------------------------------
# Input checks and column blocks (shared by every rule)
# ----------------------------------------------------------------------------------------


def as_matrix(X: Any, rule: str) -> np.ndarray:
    """Validate X as a non-empty (n, d) real array; integers/bools become float64."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ConfigError(
            f"{rule}: expected the stacked payloads as a non-empty 2-D array (n workers, d), "
            f"got shape {X.shape}"
        )
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ConfigError(f"{rule}: needs real-valued rows, got dtype {X.dtype}")
    if not np.issubdtype(X.dtype, np.floating):
        if not (np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_):
            raise ConfigError(f"{rule}: needs numeric rows, got dtype {X.dtype}")
        X = X.astype(np.float64)
    return X


def check_f(f: Any, n: int, rule: str, a: int, b: int) -> int:
    """Validate the number of tolerated adversaries f against the rule's need n >= a f + b."""
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise ConfigError(f"{rule}: f (tolerated adversaries) must be an integer >= 0, got {f!r}")
    f = int(f)
    if n < a * f + b:
        raise ConfigError(
            f"{rule} with f={f} needs n >= {a}f+{b} = {a * f + b} rows, got n={n}; "
            f"use more workers or a smaller f"
        )
    return f


def matrix_and_f(X: Any, f: Any, rule: str, a: int, b: int) -> tuple[np.ndarray, int]:
    """``as_matrix(X)`` (n, d) and f checked against the rule's need n >= a f + b."""
    X = as_matrix(X, rule)
    return X, check_f(f, X.shape[0], rule, a, b)


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int >= 1 (a rule's count option); ConfigError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def positive_float(value: Any, what: str) -> float:
    """``value`` as a finite float > 0 (a tolerance or radius); ConfigError naming ``what``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ConfigError(f"{what} must be a positive finite number, got {value!r}")
    return v


def block_step(n: int) -> int:
    """Columns per block for n rows: about ``_BLOCK_ELEMS / n``, at least 1024."""
    return max(1024, _BLOCK_ELEMS // max(n, 1))


def combine(weights: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Return ``weights @ X`` as a (d,) array of X's dtype, without an (n, d) upcast copy."""
    return np.asarray(weights, dtype=X.dtype) @ X


# ----------------------------------------------------------------------------------------
# Coordinate-wise rules
# ----------------------------------------------------------------------------------------


def mean(X: np.ndarray) -> np.ndarray:
    """Coordinate-wise mean: X (n, d) -> (d,), X's floating dtype."""
    X = as_matrix(X, "mean")
    return X.mean(axis=0)


def median(X: np.ndarray) -> np.ndarray:
    """Coordinate-wise median, numpy's convention: for even n the mean of the two middle values.

    Equal to ``np.median(X, axis=0)`` bit for bit, computed through one ``np.sort`` along
    axis 0 (numpy's SIMD sort), which measured about 9x faster than ``np.median``'s
    ``partition`` on (45, 1e6) float32. Shapes: X (n, d) -> (d,), X's floating dtype.
    """
    X = as_matrix(X, "median")
    S = np.sort(X, axis=0)
    return median_of_sorted(S)


def median_of_sorted(S: np.ndarray) -> np.ndarray:
    n = S.shape[0]
    k = n // 2
    if n % 2:
        return S[k].copy()
    return np.mean(S[k - 1 : k + 1], axis=0)


def trimmed_mean(X: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise trimmed mean: drop the f largest and f smallest values, average the rest.

    Yin, Chen, Ramchandran, Bartlett, "Byzantine-robust distributed learning: towards optimal
    statistical rates", ICML 2018 (trimming parameter beta = f/n).

    Parameters
    ----------
    X : ndarray, shape (n, d)
    f : int
        Values trimmed at each end per coordinate; needs n >= 2f+1.

    Returns
    -------
    ndarray, shape (d,), X's floating dtype
    """
    X, f = matrix_and_f(X, f, "trimmed_mean", 2, 1)
    n = X.shape[0]
    if f == 0:
        return X.mean(axis=0)
    S = np.sort(X, axis=0)
    return S[f : n - f].mean(axis=0)
