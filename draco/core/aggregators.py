"""Robust aggregation rules: the baselines DRACO is compared against.

Every rule maps the stacked payloads ``X`` of shape (n, d) (one row per worker) to one vector
of shape (d,). Real floating input keeps its dtype (float32 in, float32 out); integer or bool
input is computed in float64. Rows are expected to be finite: dropping non-finite payloads
is the caller's job (``draco.core.baseline.UncodedCode`` treats them as erasures).

Rules and their conventions (sources in each docstring):

=====================  =========================================================  ===========
rule                   what it returns                                            needs
=====================  =========================================================  ===========
``mean``               coordinate-wise mean                                       n >= 1
``median``             coordinate-wise median (numpy: mean of the two middle      n >= 1
                       values for even n)
``trimmed_mean``       per coordinate, the mean after dropping the f largest and  n >= 2f+1
                       f smallest values
``krum``               the row with the smallest Krum score                       n >= 2f+3
``multi_krum``         the mean of the m rows with the smallest Krum scores       n >= 2f+3
``bulyan``             Krum-selected n-2f rows, then per coordinate the mean of   n >= 4f+3
                       the n-4f values closest to their median
``geometric_median``   argmin_z sum_i ||x_i - z|| (Weiszfeld / Vardi-Zhang)       n >= 1
``centered_clipping``  iterated clipped re-centring around a start point          n >= 1
=====================  =========================================================  ===========

``aggregate(name, X, f, **options)`` looks a rule up in ``AGGREGATORS`` and passes ``f`` only
to the rules that take it. Mistakes a user can make (unknown rule or option, ``f`` too large
for ``n``, wrong shapes) raise ``draco.errors.ConfigError``.

Where each rule lives: ``draco.core.robust_stats`` (the coordinate-wise rules and the input
checks they all share), ``draco.core.distance_rules`` (Krum, multi-Krum, Bulyan, geometric
median: the rules that judge rows by their pairwise distances), ``draco.core.clipping``
(centered clipping and the state it keeps across rounds). This module is the registry and
the one import for all of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from draco.core.clipping import CENTERS, centered_clipping
from draco.core.distance_rules import (
    NEIGHBOUR_CONVENTIONS,
    GeometricMedianResult,
    bulyan,
    centered_gram,
    geometric_median,
    geometric_median_with_info,
    krum,
    krum_scores,
    multi_krum,
    squared_distances,
)
from draco.core.robust_stats import mean, median, trimmed_mean
from draco.errors import ConfigError

__all__ = [
    "AGGREGATORS",
    "CENTERS",
    "NEIGHBOUR_CONVENTIONS",
    "Aggregator",
    "GeometricMedianResult",
    "aggregate",
    "bulyan",
    "centered_clipping",
    "centered_gram",
    "geometric_median",
    "geometric_median_with_info",
    "krum",
    "krum_scores",
    "mean",
    "median",
    "multi_krum",
    "option_names",
    "squared_distances",
    "takes_f",
    "trimmed_mean",
]


Aggregator = Callable[..., np.ndarray]

AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
    "bulyan": bulyan,
    "geometric_median": geometric_median,
    "centered_clipping": centered_clipping,
}


def takes_f(name: str) -> bool:
    """Whether the rule ``name`` takes the number of tolerated adversaries f."""
    return "f" in inspect.signature(_lookup(name)).parameters


def option_names(name: str) -> tuple[str, ...]:
    """Keyword options the rule ``name`` accepts (besides X and f)."""
    params = inspect.signature(_lookup(name)).parameters
    return tuple(p for p in params if p not in ("X", "f"))


def _lookup(name: str) -> Aggregator:
    try:
        return AGGREGATORS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown aggregator {name!r}; choose one of {', '.join(AGGREGATORS)}"
        ) from None


def aggregate(name: str, X: np.ndarray, f: int, **options: Any) -> np.ndarray:
    """Apply the rule ``name`` to X, passing ``f`` to the rules that take it.

    Parameters
    ----------
    name : str
        A key of ``AGGREGATORS``.
    X : ndarray, shape (n, d)
    f : int
        Tolerated adversaries (ignored by mean, median, geometric_median, centered_clipping).
    **options
        The rule's keyword options (e.g. ``m`` for multi_krum, ``tau`` for
        centered_clipping); unknown ones raise ConfigError.

    Returns
    -------
    ndarray, shape (d,)
    """
    fn = _lookup(name)
    unknown = set(options) - set(option_names(name))
    if unknown:
        allowed = ", ".join(option_names(name)) or "none"
        raise ConfigError(
            f"aggregator {name!r} has no option(s) {', '.join(sorted(unknown))}; "
            f"it takes: {allowed}"
        )
    if takes_f(name):
        return fn(X, f, **options)
    return fn(X, **options)
