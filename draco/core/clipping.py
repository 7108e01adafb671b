"""Centered clipping: the stateless rule, and the state its paper carries across rounds.

``centered_clipping`` maps the stacked payloads ``X`` of shape (n, d) to one vector of shape
(d,) in X's floating dtype. ``ClippingState`` is what the parameter server keeps between
rounds for it (``draco.core.baseline.UncodedCode`` owns one): per-worker momenta and the
previous round's aggregate, checkpointed with the optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from draco.core.robust_stats import (
    as_matrix,
    block_step,
    combine,
    median,
    positive_float,
    positive_int,
)
from draco.errors import ConfigError

CENTERS = ("zero", "mean", "median")


def centered_clipping(
    X: np.ndarray,
    tau: float = 10.0,
    iters: int = 1,
    center: np.ndarray | str | None = None,
) -> np.ndarray:
    """Centered clipping (Karimireddy, He, Jaggi, "Learning from history for Byzantine robust
    optimization", ICML 2021, eq. (CC)).

    1. v_0 = center.
    2. For l = 0 .. iters-1:
       v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) min(1, tau / ||x_i - v_l||).
    3. Return v_iters.

    The paper starts from the previous round's aggregate (its momentum). This function is
    stateless: pass that vector as ``center``; ``None``/"zero" starts from 0 (what the
    authors' code does in the first round), "mean"/"median" from the coordinate-wise
    mean/median of X.

    Parameters
    ----------
    X : ndarray, shape (n, d)
    tau : float
        Clipping radius (> 0; default 10, the authors' code's default).
    iters : int
        Clipping iterations (>= 1; default 1, as in the paper's experiments).
    center : ndarray of shape (d,), {"zero", "mean", "median"} or None

    Returns
    -------
    ndarray, shape (d,), X's floating dtype
    """
    X = as_matrix(X, "centered_clipping")
    tau = positive_float(tau, "centered_clipping: tau")
    iters = positive_int(iters, "centered_clipping: iters")
    n, d = X.shape
    if center is None or (isinstance(center, str) and center == "zero"):
        v = np.zeros(d, dtype=np.float64)
    elif isinstance(center, str):
        if center == "mean":
            v = X.mean(axis=0, dtype=np.float64)
        elif center == "median":
            v = median(X).astype(np.float64)
        else:
            raise ConfigError(
                f"centered_clipping: center must be an array of shape ({d},) or one of "
                f"{CENTERS}, got {center!r}"
            )
    else:
        v = np.asarray(center, dtype=np.float64)
        if v.shape != (d,):
            raise ConfigError(f"centered_clipping: center must have shape ({d},), got {v.shape}")
    step = block_step(n)
    for _ in range(iters):
        # ||x_i - v||^2 block by block: no (n, d) temporary.
        sq = np.zeros(n, dtype=np.float64)
        for a in range(0, d, step):
            B = X[:, a : a + step] - v[a : a + step]
            sq += np.einsum("ij,ij->i", B, B)
        norms = np.sqrt(sq)
        # min(1, tau / ||x_i - v||), 1 for rows at v itself
        scale = np.ones(n)
        away = norms > 0.0
        scale[away] = np.minimum(1.0, tau / norms[away])
        # v + (1/n) sum_i c_i (x_i - v) = (1 - mean(c)) v + (c/n) @ X
        v = (1.0 - scale.mean()) * v + combine(scale / n, X)
    return v.astype(X.dtype)


class ClippingState:
    """Centered clipping's memory across rounds (Karimireddy, He, Jaggi, ICML 2021, Alg. 2).

    1. Each worker's payloads are smoothed into a worker momentum
       ``m_j <- (1 - beta) x_j + beta m_j`` (beta = ``momentum``; m_j = 0 before worker j's
       first payload); the rule is applied to the momenta instead of the payloads.
    2. With ``previous_center`` the clipping starts from the previous round's aggregate
       (zero in the first round, or when the gradient length changed).
    3. After a successful round ``commit`` keeps the momenta used and the aggregate.

    Departure: the momentum is kept by the PS per worker id over the payloads it received,
    not by the workers, so a liar's payloads are smoothed too. ``momentum=0`` without
    ``previous_center`` is the stateless one-shot rule.

    Parameters
    ----------
    momentum : float
        beta in [0, 1).
    previous_center : bool
        Start each round's clipping from the previous aggregate.
    """

    def __init__(self, momentum: float = 0.0, previous_center: bool = False) -> None:
        self.momentum = float(momentum)
        self.previous_center = previous_center
        self._momenta: dict[int, np.ndarray] = {}  # worker id -> (d,) float32
        self._center: np.ndarray | None = None  # (d,) float32: the last aggregate

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ClippingState:
        """Take the state's options out of the rule's ``options`` (changed in place).

        ``momentum`` (default 0.9) is removed; ``center="previous"`` (the default) is
        removed and turns ``previous_center`` on. ConfigError for a momentum outside [0, 1).
        """
        beta = options.pop("momentum", 0.9)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
            raise ConfigError(f"centered_clipping: momentum must lie in [0, 1), got {beta!r}")
        previous = options.get("center", "previous") == "previous"
        if previous:
            options.pop("center", None)
        return cls(float(beta), previous)

    def rows(
        self, received: Mapping[int, np.ndarray], usable: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Step 1: the rows to aggregate, shape (len(usable), d), and the new momenta.

        Without momentum the payloads themselves (and no momenta). The momenta are not kept
        until ``commit``: a round that fails leaves the state as it was.
        """
        if self.momentum <= 0:
            return np.stack([received[j] for j in usable]), {}
        beta = np.float32(self.momentum)
        momenta: dict[int, np.ndarray] = {}
        for j in usable:
            m = received[j] * (np.float32(1.0) - beta)
            old = self._momenta.get(j)
            if old is not None and old.shape == m.shape:
                m += beta * old
            momenta[j] = m.astype(np.float32, copy=False)
        return np.stack([momenta[j] for j in usable]), momenta

    def center(self, d: int) -> np.ndarray | None:
        """Step 2: the previous aggregate, (d,) float32, when it is the start point."""
        if self.previous_center and self._center is not None and self._center.shape == (d,):
            return self._center
        return None

    def commit(self, momenta: Mapping[int, np.ndarray], aggregate: np.ndarray) -> None:
        """Step 3: keep this round's momenta and its aggregate, shape (d,)."""
        self._momenta.update(momenta)
        self._center = np.array(aggregate, dtype=np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as named arrays: ``cc_center`` (d,), ``cc_momentum_ids`` (k,) int64 and
        ``cc_momenta`` (k, d) float32; empty before the first round."""
        out: dict[str, np.ndarray] = {}
        if self._center is not None:
            out["cc_center"] = self._center.copy()
        if self._momenta:
            ids = sorted(self._momenta)
            out["cc_momentum_ids"] = np.array(ids, dtype=np.int64)
            out["cc_momenta"] = np.stack([self._momenta[j] for j in ids])
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore ``state_dict()`` output (a checkpoint of a resumed run)."""
        center = state.get("cc_center")
        self._center = None if center is None else np.array(center, dtype=np.float32)
        self._momenta = {}
        ids, rows = state.get("cc_momentum_ids"), state.get("cc_momenta")
        if ids is not None and rows is not None:
            for j, row in zip(np.asarray(ids).tolist(), np.asarray(rows, np.float32), strict=True):
                self._momenta[int(j)] = row.copy()
