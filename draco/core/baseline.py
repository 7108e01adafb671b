"""The no-redundancy baseline, code name "none": every worker computes one partition.

Worker j computes partition j only (redundancy 1) and sends its float32 gradient; the
parameter server combines the n payloads with a robust aggregation rule from
``draco.core.aggregators`` (mean, median, Krum, geometric median, ...) instead of decoding.
Nothing is exact and no liar is located: this is what DRACO is compared against.

Conventions (docs/architecture.md, "Codes"):

- ``decode(received).gradient`` is the SUM over partitions, so the aggregate (an estimate of
  the MEAN partition gradient) is multiplied by ``n_partitions``; the parameter server then
  divides by ``n_partitions`` as for every code.
- Missing workers, and payloads of the wrong shape or dtype or with non-finite values, are
  erasures: the rule is applied to the remaining rows, with f = ``n_adversaries`` (or the
  ``f`` option).
- ``adversaries`` is always empty: an aggregator does not say who lied.
- ``centered_clipping`` is stateful, as in its paper (Karimireddy, He, Jaggi, ICML 2021,
  Algorithm 2): each worker's payloads are smoothed into a worker momentum
  ``m_j <- (1 - beta) x_j + beta m_j`` (option ``momentum`` = beta, default 0.9; m_j = 0
  before worker j's first payload) and the clipping starts from the previous round's
  aggregate (option ``center``, default "previous"; zero in the first round). Departure:
  the momentum is kept by the PS per worker id over the payloads it received, not by the
  workers, so a liar's payloads are smoothed too (in the paper a liar sends any vector as
  its momentum; the PS-side EMA of a constant is that constant after a few rounds). The
  state (``draco.core.clipping.ClippingState``) is checkpointed (``state_dict`` /
  ``load_state_dict``); ``momentum=0`` with ``center="zero"`` is the stateless one-shot rule.

Example::

    code = UncodedCode(45, 5, aggregator="multi_krum", m=30)
    payloads = {j: code.encode(j, grads[j : j + 1]) for j in range(45)}
    result = code.decode(payloads)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from draco.core.aggregators import AGGREGATORS, aggregate, option_names, takes_f
from draco.core.blas_threads import single_blas_thread
from draco.core.clipping import ClippingState
from draco.core.decoder_types import DecodeResult
from draco.errors import ConfigError, DecodeError

_SCALAR_TYPES = (str, int, float, bool, type(None))


class UncodedCode:
    """No redundancy: worker j computes partition j; the PS aggregates the n payloads.

    Parameters
    ----------
    n_workers : int
        n >= 1; also the number of partitions.
    n_adversaries : int
        s, 0 <= s < n; passed to the rule as f unless the ``f`` option is given.
    aggregator : str
        A key of ``draco.core.aggregators.AGGREGATORS`` (default "mean").
    **aggregator_options
        The rule's options (e.g. ``m=30`` for multi_krum, ``tau=1.0`` for
        centered_clipping, ``f=3`` to override f). Must be msgpack-able scalars: they travel
        to the workers in ``options``.

    Raises
    ------
    ConfigError
        Unknown rule or option, or a rule that cannot run on n rows with this f.
    """

    name = "none"
    redundancy = 1
    payload_dtype = np.dtype(np.float32)

    def __init__(
        self,
        n_workers: int,
        n_adversaries: int,
        aggregator: str = "mean",
        **aggregator_options: Any,
    ) -> None:
        if isinstance(n_workers, bool) or not isinstance(n_workers, (int, np.integer)):
            raise ConfigError(f"code 'none': n_workers must be an integer, got {n_workers!r}")
        if isinstance(n_adversaries, bool) or not isinstance(n_adversaries, (int, np.integer)):
            raise ConfigError(
                f"code 'none': n_adversaries must be an integer, got {n_adversaries!r}"
            )
        if n_workers < 1 or not 0 <= n_adversaries < n_workers:
            raise ConfigError(
                f"code 'none' needs n_workers >= 1 and 0 <= n_adversaries < n_workers, "
                f"got {n_workers} and {n_adversaries}"
            )
        if aggregator not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}"
            )
        options = dict(aggregator_options)
        for key, value in options.items():
            if not isinstance(value, _SCALAR_TYPES):
                raise ConfigError(
                    f"aggregator option {key}={value!r} must be a number, string, bool or None "
                    f"(options are sent to the workers)"
                )
        # centered_clipping's state across rounds: worker momenta and the previous aggregate
        # (an empty state for the other rules, which keep none).
        self._clipping = ClippingState()
        if aggregator == "centered_clipping":
            self._clipping = ClippingState.from_options(options)
        f = options.pop("f", n_adversaries)
        if "f" in aggregator_options and not takes_f(aggregator):
            raise ConfigError(f"aggregator {aggregator!r} takes no f")
        unknown = set(options) - set(option_names(aggregator))
        if unknown:
            raise ConfigError(
                f"aggregator {aggregator!r} has no option(s) {', '.join(sorted(unknown))}; "
                f"it takes: {', '.join(option_names(aggregator)) or 'none'}"
            )
        self.n_workers = int(n_workers)
        self.n_adversaries = int(n_adversaries)
        self.n_partitions = self.n_workers
        self.assignment = np.eye(self.n_workers, dtype=bool)
        self.aggregator = aggregator
        self.f = f
        self._rule_options = options
        self.options: dict[str, Any] = {"aggregator": aggregator, **aggregator_options}
        # Dry run on n one-dimensional rows: rejects f too large for n and bad option values
        # now, at configuration time, rather than in the first round.
        aggregate(aggregator, np.zeros((self.n_workers, 1), np.float32), f, **options)

    def __repr__(self) -> str:
        return (
            f"UncodedCode(n_workers={self.n_workers}, n_adversaries={self.n_adversaries}, "
            f"options={self.options!r})"
        )

    def partitions_of(self, worker: int) -> tuple[int, ...]:
        """The partitions worker ``worker`` computes: just its own, ``(worker,)``."""
        self._check_worker(worker)
        return (int(worker),)

    def encode(self, worker: int, grads: np.ndarray) -> np.ndarray:
        """Payload of ``worker``: its single partition gradient.

        Parameters
        ----------
        worker : int
        grads : ndarray, shape (1, d), float32

        Returns
        -------
        ndarray, shape (d,), float32 (a copy)
        """
        self._check_worker(worker)
        grads = np.asarray(grads)
        if grads.ndim != 2 or grads.shape[0] != 1:
            raise ConfigError(
                f"code 'none': worker {worker} computes one partition; expected grads of "
                f"shape (1, d), got {grads.shape}"
            )
        return np.array(grads[0], dtype=np.float32)

    def ready(self, received: Mapping[int, np.ndarray]) -> bool:
        """True once every worker's payload has arrived (an aggregator needs all of them)."""
        return all(j in received for j in range(self.n_workers))

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> DecodeResult:
        """Aggregate the usable payloads.

        1. Usable = 1-D float32 of the most common length, all finite; the other workers
           (and the missing ones) are erasures. Ids outside [0, n) are ignored.
        2. X = the usable payloads stacked in worker order, shape (m, d).
        3. gradient = aggregator(X, f) * n_partitions, float32.

        Parameters
        ----------
        received : Mapping[int, ndarray]
            Worker id -> payload, shape (d,).
        rng : numpy.random.Generator, optional
            Unused (the interface's; aggregators are deterministic).

        Returns
        -------
        DecodeResult
            ``adversaries`` is empty.

        Raises
        ------
        DecodeError
            No usable payload, or too few for the rule with this f.
        """
        candidates = {
            j: p
            for j, p in received.items()
            if isinstance(j, (int, np.integer))
            and 0 <= j < self.n_workers
            and isinstance(p, np.ndarray)
            and p.ndim == 1
            and p.dtype == self.payload_dtype
            and p.size > 0
        }
        lengths = Counter(p.shape[0] for p in candidates.values())
        common = lengths.most_common(2)
        if not common:
            raise DecodeError(
                f"code 'none': no usable payload among {len(received)} received "
                f"(need 1-D float32 gradients); check the workers"
            )
        if len(common) == 2 and common[0][1] == common[1][1]:
            raise DecodeError(
                f"code 'none': payload lengths disagree ({dict(lengths)}); cannot tell the "
                f"gradient length"
            )
        d = common[0][0]
        usable = sorted(
            int(j) for j, p in candidates.items() if p.shape[0] == d and bool(np.isfinite(p).all())
        )
        if not usable:  # every payload of the right length holds NaN/Inf
            raise DecodeError(
                f"code 'none': no usable payload among {len(received)} received (every "
                f"{d}-long payload holds NaN/Inf)"
            )
        erasures = frozenset(range(self.n_workers)) - frozenset(usable)
        stateful = self.aggregator == "centered_clipping"
        options = dict(self._rule_options)
        momenta: dict[int, np.ndarray] = {}
        if stateful:
            X, momenta = self._clipping.rows(received, usable)
            center = self._clipping.center(d)
            if center is not None:
                options["center"] = center
        else:
            X = np.stack([received[j] for j in usable])
        try:
            # One OpenBLAS thread, as for the cyclic decode (draco/core/blas_threads.py): on
            # shared cores the threaded BLAS calls of the distance-based rules stall (the
            # geometric median of 45 x 1,033,510 under load: 17-27 s with numpy's default
            # threads, 0.7-0.8 s on one thread, measured 2026-12-01).
            with single_blas_thread():
                agg = aggregate(self.aggregator, X, self.f, **options)
        except ConfigError as exc:
            raise DecodeError(
                f"code 'none': only {len(usable)} of {self.n_workers} payloads usable "
                f"({len(erasures)} erasures), too few for {self.aggregator} with f={self.f}: "
                f"{exc}"
            ) from exc
        if stateful:
            self._clipping.commit(momenta, agg)
        gradient = (agg * np.float32(self.n_partitions)).astype(np.float32, copy=False)
        return DecodeResult(gradient=gradient, adversaries=frozenset(), erasures=erasures)

    # -- state across rounds (centered_clipping only; checkpointed by the round engine)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The aggregation state as named arrays (empty for the stateless rules)."""
        return self._clipping.state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``state_dict()`` output (a checkpoint of a resumed run)."""
        self._clipping.load_state_dict(state)

    def _check_worker(self, worker: int) -> None:
        if isinstance(worker, bool) or not isinstance(worker, (int, np.integer)):
            raise ConfigError(f"worker id must be an integer, got {worker!r}")
        if not 0 <= worker < self.n_workers:
            raise ConfigError(f"worker id {worker} out of range [0, {self.n_workers})")
