"""The round engine: the pure logic of synchronous DRACO rounds (no sockets, no clock).

The asyncio shell (``draco.net.server``) owns the connections and the deadline; this module
(with the collector, ``draco.ps.collector``, and the plan, ``draco.ps.plan``) decides
everything else::

    engine = RoundEngine(code, params, SGD(cfg, dim), ...)
    while not engine.finished:
        rnd = engine.start_round()            # RoundCollector: plan (liars, attack seeds)
        ... broadcast RoundStart(rnd.index, engine.params, *rnd.plan.instruction(j),
                                 attempt=rnd.attempt) ...
        verdict = rnd.offer(j, round_index, payload, compute_seconds, attempt=a)  # per Gradient
        rnd.erase(j, "disconnected")                                     # per lost worker
        ... until rnd.should_close or the deadline ...
        record = engine.finish(rnd, wait_seconds=...)   # decode + update (or a failed round)

One round, step by step (``finish``):

1. Omniscient attacks (alie, ipm, colluding) need the honest payloads, which a worker does
   not have: the PS replaces each scheduled liar's received payload by
   ``attack.apply(own, honest=<the other received payloads>)``, all liars in one
   ``attack.apply_all`` call (labelled ``attack_simulated_at_ps`` in the metrics). Other
   attacks are applied by the liars.
2. ``result = code.decode(received)``: ``result.gradient`` is the SUM over all partitions.
3. ``params <- sgd.step(params, result.gradient / n_partitions)`` (a mean over the batch).

A round whose payloads exceed the code's budget (``DecodeError``) FAILS: the model is not
updated and the same round index is run again next as a new ATTEMPT (same samples, same
liars, same parameters; ``RoundCollector.attempt`` = 1, 2, ...), so the model trajectory
stays the one of a clean run. A failed attempt counts against ``max_failed_rounds`` when the
shell says it was an honest try (``finish(..., count_failure=True)``: every worker was
connected); after ``max_failed_rounds`` counted failures in a row the engine stops
(``engine.stopped``). Attempts made while workers were missing are bounded by the shell's
clock instead (``--rejoin-timeout``).

A DIVERGED model stops the run at once (``engine.diverged`` says why; no retries, since a
retry recomputes the same gradients from the same parameters): an update that would make
the parameters NaN/Inf (refused: ``params`` keep the last finite model), or an attempt with
more NaN/Inf payloads than the code's s liars can send, or (digest vote) a NaN/Inf payload
verified against s+1 equal digests: the honest workers' own gradients are non-finite.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from draco.core.attacks import Attack
from draco.core.decoder_types import DecodeResult, all_finite
from draco.core.digests import DEFAULT_KEY_BYTES, decode_repetition_digests, payload_digest
from draco.errors import ConfigError, DecodeError
from draco.ps.cluster_time import DEFAULT_LINK_GBPS, cluster_seconds, transfer_seconds
from draco.ps.collector import RoundCollector
from draco.ps.digest_vote import DigestVoteConfig, check_vote, code_groups
from draco.ps.interfaces import CodeLike
from draco.ps.optim import SGD
from draco.ps.plan import RoundPlan, attack_seed, choose_liars
from draco.ps.record import AttemptRecord

_CODE_STATE = "code_"  # checkpoint array prefix of the code's (aggregator's) state


def _nonfinite(payloads: Mapping[int, np.ndarray], among: Iterable[int]) -> set[int]:
    """The workers in ``among`` whose payload holds NaN/Inf: one read of each of those only.

    ``finish`` asks about the few payloads a decode erased (or, after a failed decode, all
    of them: a rare path) so that they count as erasures, as if screened on arrival.
    """
    return {j for j in among if j in payloads and not all_finite(payloads[j])}


def _diverged_hint(n_nonfinite: int, n_received: int, s: int) -> str:
    """What a failed round means when more payloads are NaN/Inf than liars can send."""
    return (
        f"; {n_nonfinite} of {n_received} payloads are NaN/Inf, more than the {s} liars the "
        "code allows: honest workers computed non-finite gradients, so the model has most "
        "likely diverged (a smaller --lr, or a defence that keeps the liars out)"
    )


@dataclass
class EngineTotals:
    """Counters over the whole run (checkpointed)."""

    completed_rounds: int = 0
    failed_rounds: int = 0  # failed attempts over the run, counted or not
    consecutive_failures: int = 0  # counted failed attempts since the last completed round
    adversaries_located: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "completed_rounds": self.completed_rounds,
            "failed_rounds": self.failed_rounds,
            "consecutive_failures": self.consecutive_failures,
            "adversaries_located": self.adversaries_located,
        }


@dataclass(frozen=True)
class _Decoded:
    """The decode and update of one attempt (``RoundEngine._decode``), times in seconds."""

    result: DecodeResult | None  # None: the decode raised
    error: str  # "" when the attempt succeeded
    nonfinite: set[int]  # workers whose payload held NaN/Inf
    simulation_seconds: float
    simulation_cpu_seconds: float
    decode_seconds: float
    update_seconds: float
    cpu_seconds: float  # decode + update, this thread


class RoundEngine:
    """Synchronous rounds over one code: plans, collectors, decode and update.

    Parameters
    ----------
    code : CodeLike
        The run's code (``make_code(...)``).
    params : np.ndarray
        Current parameters, float32 (d,). Never modified in place (the shell may still be
        sending them); every update makes a new array.
    sgd : SGD
        The optimizer (its state is part of a checkpoint).
    rounds : int
        Total rounds of the run.
    seed : int
        Run seed (liars, attack seeds).
    attack : Attack or None
        The experiment's attack (None: honest run).
    schedule : str
        "random" or "fixed" (see ``choose_liars``).
    max_failed_rounds : int
        Counted failed attempts in a row (see ``finish``) before ``stopped``.
    start_round : int
        Completed rounds so far (a resumed run).
    decode_rng : callable, optional
        Returns the generator for one decode. Default: fresh OS entropy per round (the
        cyclic decoder's projection must be secret and unpredictable).
    clock : callable, optional
        Monotonic seconds (tests may inject).
    link_gbps : float
        Link speed of the modelled cluster, for ``cluster_seconds`` (docs/cluster_time.md).
    vote : str
        "full" (every worker sends its payload) or "digest" (digest-first vote, repetition
        code with the exact vote only: ``check_vote``).
    digest : DigestVoteConfig, optional
        Limits of the digest-first vote.
    """

    def __init__(
        self,
        code: CodeLike,
        params: np.ndarray,
        sgd: SGD,
        *,
        rounds: int,
        seed: int = 0,
        attack: Attack | None = None,
        schedule: str = "random",
        max_failed_rounds: int = 5,
        start_round: int = 0,
        decode_rng: Callable[[], np.random.Generator] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        link_gbps: float = DEFAULT_LINK_GBPS,
        vote: str = "full",
        digest: DigestVoteConfig | None = None,
    ) -> None:
        check_vote(vote, code)
        self.vote = vote
        self.digest_config = digest or DigestVoteConfig()
        params = np.asarray(params)
        if not (np.isfinite(link_gbps) and link_gbps > 0):
            raise ConfigError(f"--link-gbps must be a positive number, got {link_gbps}")
        self.link_gbps = float(link_gbps)
        if params.dtype != np.float32 or params.ndim != 1:
            raise ValueError(f"params must be float32 (d,), got {params.dtype} {params.shape}")
        if schedule not in ("random", "fixed"):
            raise ConfigError(f"adversary schedule must be 'random' or 'fixed', got {schedule!r}")
        self.code = code
        self.params = params
        self.dim = int(params.shape[0])
        self.sgd = sgd
        self.rounds = int(rounds)
        self.seed = int(seed)
        self.attack = attack
        self.schedule = schedule
        self.max_failed_rounds = int(max_failed_rounds)
        self.totals = EngineTotals(completed_rounds=int(start_round))
        self._decode_rng = decode_rng or (lambda: np.random.default_rng(secrets.randbits(128)))
        self._clock = clock
        self.current: RoundCollector | None = None
        self.attempt = 0  # attempts of next_round so far (failed ones)
        self.diverged = ""  # why the model diverged ("" while it has not): the run ends

    # -- state

    @property
    def next_round(self) -> int:
        """Index of the next round to run (= completed rounds)."""
        return self.totals.completed_rounds

    @property
    def stopped(self) -> bool:
        """Too many consecutive failed rounds, or a diverged model: the run cannot go on."""
        return bool(self.diverged) or self.totals.consecutive_failures >= self.max_failed_rounds

    @property
    def done(self) -> bool:
        """All rounds completed."""
        return self.next_round >= self.rounds

    @property
    def finished(self) -> bool:
        return self.done or self.stopped

    def plan(self, round_index: int) -> RoundPlan:
        """The (deterministic) plan of ``round_index``."""
        attack = self.attack
        liars: frozenset[int] = frozenset()
        if attack is not None and self.code.n_adversaries > 0:
            liars = choose_liars(
                self.code.n_workers,
                self.code.n_adversaries,
                round_index,
                self.seed,
                self.schedule,
            )
        return RoundPlan(
            round_index=round_index,
            liars=liars,
            attack=None if attack is None else attack.name,
            simulated_at_ps=bool(attack is not None and attack.omniscient),
            seed=self.seed,
        )

    def start_round(self) -> RoundCollector:
        """A collector for the next round (its plan included)."""
        if self.finished:
            raise RuntimeError("the run is finished")
        self.current = RoundCollector(
            self.plan(self.next_round),
            self.code,
            self.dim,
            attempt=self.attempt,
            # A fresh secret key per attempt: no liar can prepare a collision in advance.
            digest_key=secrets.token_bytes(DEFAULT_KEY_BYTES) if self.vote == "digest" else None,
            digest=self.digest_config,
        )
        return self.current

    # -- closing a round

    def _simulate_attack(
        self, rnd: RoundCollector, received: dict[int, np.ndarray]
    ) -> dict[int, np.ndarray]:
        """Step 1: replace the scheduled liars' payloads (omniscient attacks only)."""
        received = dict(received)
        attack = self.attack
        if attack is None or not rnd.plan.simulated_at_ps:
            return received
        liars = [j for j in sorted(rnd.plan.liars) if j in received]
        honest_ids = [j for j in sorted(received) if j not in rnd.plan.liars]
        if not liars or not honest_ids:
            return received
        # ``offer`` no longer screens NaN/Inf: leave them out here as it did (a NaN liar
        # stays an erasure; the statistic sees the finite honest payloads only: colluding's
        # median does not propagate NaN, so the forged lie would silently differ). One read
        # per payload, counted in the simulation's time (the experiment's), not the PS's.
        bad = _nonfinite(received, liars + honest_ids)
        if bad:
            liars = [j for j in liars if j not in bad]
            honest_ids = [j for j in honest_ids if j not in bad]
            if not liars or not honest_ids:
                return received
        honest = np.stack([received[j] for j in honest_ids])
        forged = attack.apply_all(
            [received[j] for j in liars],
            rngs=[np.random.default_rng(attack_seed(self.seed, rnd.index, j)) for j in liars],
            honest=honest,
            n_workers=self.code.n_workers,
            n_adversaries=self.code.n_adversaries,
        )
        for j, lie in zip(liars, forged, strict=True):
            received[j] = np.asarray(lie, dtype=rnd.dtype)
        return received

    def _simulate_attack_on_digests(
        self, rnd: RoundCollector
    ) -> tuple[dict[int, bytes], frozenset[int]]:
        """Step 1 for the digest-first vote: the digests as the full vote would see them.

        An omniscient attack needs the honest payloads: every worker whose digest is its
        group's verified majority digest sent exactly that group's verified payload, so the
        payloads are rebuilt from the verified ones and the attack is simulated on them as
        in the full vote. A forged payload then counts through its keyed digest (a
        non-finite one is an erasure, as in the full vote). Returns (digests, erased).
        """
        digests = dict(rnd.digests)
        if self.attack is None or not rnd.plan.simulated_at_ps:
            return digests, frozenset()
        rebuilt: dict[int, np.ndarray] = {}
        for g, vote in rnd._fetch_votes.items():
            payload = rnd.verified.get(g)
            if payload is None or vote.digest is None:
                continue
            for j in code_groups(self.code)[g]:
                if digests.get(j) == vote.digest:
                    rebuilt[j] = payload
        forged = self._simulate_attack(rnd, rebuilt)
        erased = set()
        key = rnd.digest_key
        assert key is not None
        for j in rnd.plan.liars:
            if j not in rebuilt or forged[j] is rebuilt[j]:
                continue
            if not np.isfinite(forged[j]).all():
                erased.add(j)
                digests.pop(j, None)
            else:
                digests[j] = payload_digest(forged[j], key, rnd.digest_config.digest_bytes)
        return digests, frozenset(erased)

    def finish(
        self, rnd: RoundCollector, *, wait_seconds: float = 0.0, count_failure: bool = True
    ) -> AttemptRecord:
        """Decode and update (steps 1-3 of the module docstring); a failed attempt keeps params.

        Parameters
        ----------
        rnd : RoundCollector
            The attempt to close; workers that did not deliver count as erasures.
        wait_seconds : float
            Seconds from broadcast to close (measured by the shell).
        count_failure : bool
            If this attempt fails, count it against ``max_failed_rounds``. The shell passes
            False when workers were not connected (it bounds those retries by time instead).

        Returns
        -------
        AttemptRecord
            The attempt's figures (``draco.ps.record``; ``ok``: the model moved).
        """
        if rnd is not self.current:
            raise RuntimeError("finish() takes the collector of the current round")
        self.current = None
        for j in range(self.code.n_workers):
            rnd.erase(j, "no payload before the round closed")
        decoded = self._decode(rnd)
        record = self._attempt_record(rnd, decoded, wait_seconds)
        if record.ok:
            self.totals.completed_rounds += 1
            self.totals.consecutive_failures = 0
            self.totals.adversaries_located += len(record.adversaries_located)
            self.attempt = 0
        else:
            self.totals.failed_rounds += 1
            self.totals.consecutive_failures += int(count_failure)
            self.attempt += 1
        return record

    def _decode(self, rnd: RoundCollector) -> _Decoded:
        """Steps 1-3: simulate the omniscient attack, decode, and (if it worked) update."""
        error = ""
        result = None
        # The omniscient attacks' simulation is the experiment's, not the PS's: timed apart.
        ts = self._clock()
        cs = time.thread_time()
        if rnd.digest_mode:
            digests, forged_erased = self._simulate_attack_on_digests(rnd)
        else:
            received = self._simulate_attack(rnd, rnd.received)
        t0 = self._clock()
        c0 = time.thread_time()
        try:
            if rnd.digest_mode:
                result = decode_repetition_digests(
                    code_groups(self.code),
                    digests,
                    rnd.verified,
                    self.code.n_adversaries,
                    liars=frozenset(rnd.fetch_liars),
                    erased=frozenset(rnd.erased) | forged_erased,
                )
            else:
                result = self.code.decode(received, rng=self._decode_rng())
            gradient = np.asarray(result.gradient)
            if gradient.shape != (self.dim,) or not all_finite(gradient):
                raise DecodeError("the decoder returned an unusable gradient")
        except DecodeError as exc:
            error = str(exc) or "beyond the code's budget"
        # Payloads with NaN/Inf (``offer`` does not screen them): the decoders erased them, so
        # only the decode's erasures are read; after a failed decode, every payload (rare).
        erased_ids = set(result.erasures) if result is not None and not error else set(rnd.received)
        nonfinite = _nonfinite(rnd.received, sorted(erased_ids))
        if error and len(nonfinite) > self.code.n_adversaries:
            error += _diverged_hint(len(nonfinite), len(rnd.received), self.code.n_adversaries)
            self.diverged = error
        elif error and rnd.digest_mode:
            # A verified payload is backed by s+1 equal digests, so an honest worker sent it.
            bad = sorted(g for g, y in rnd.verified.items() if not all_finite(y))
            if bad:
                error = self.diverged = (
                    f"{error}; the payloads of repetition groups {bad} are NaN/Inf and each "
                    "has s+1 equal digests behind it: honest workers computed non-finite "
                    "gradients, so the model has most likely diverged (a smaller --lr)"
                )
        t1 = self._clock()
        if result is not None and not error:
            # Step 3: the decoded SUM over partitions -> the mean over the global batch.
            mean_grad = gradient.astype(np.float32, copy=False) / np.float32(self.code.n_partitions)
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                stepped = self.sgd.step(self.params, mean_grad)
            if all_finite(stepped):
                self.params = stepped
            else:
                # A finite gradient overflowed the parameters: keep the last finite model
                # (the optimizer's momentum may hold Inf now, but the run ends here).
                error = self.diverged = (
                    "the update would make the parameters NaN/Inf (overflow): the model has "
                    "diverged (a smaller --lr, or a defence that keeps the liars out)"
                )
        t2 = self._clock()
        c2 = time.thread_time()
        return _Decoded(
            result=result,
            error=error,
            nonfinite=nonfinite,
            simulation_seconds=t0 - ts,
            simulation_cpu_seconds=c0 - cs,
            decode_seconds=t1 - t0,
            update_seconds=t2 - t1,
            cpu_seconds=c2 - c0,
        )

    def _attempt_record(
        self, rnd: RoundCollector, decoded: _Decoded, wait_seconds: float
    ) -> AttemptRecord:
        """The attempt's figures (contract: docs/architecture.md, "metrics.jsonl")."""
        result, error, nonfinite = decoded.result, decoded.error, decoded.nonfinite
        ok = not error
        located = sorted(int(j) for j in result.adversaries) if ok and result else []
        erasures = sorted(
            set(rnd.erased) | nonfinite | {int(j) for j in (result.erasures if result else ())}
        )
        used = sorted((set(rnd.received) - nonfinite) | set(rnd.digests))
        compute = {j: rnd.compute_seconds.get(j, 0.0) for j in used}
        per_worker_bytes = {j: rnd.bytes_to.get(j, 0) + rnd.bytes_from.get(j, 0) for j in used}
        n = self.code.n_workers
        cluster, critical = cluster_seconds(
            compute,
            per_worker_bytes,
            self.link_gbps,
            decoded.decode_seconds + decoded.update_seconds,
        )
        return AttemptRecord(
            round=rnd.index,
            wait_seconds=float(wait_seconds),
            compute_seconds=max(compute.values(), default=0.0),
            decode_seconds=decoded.decode_seconds,
            update_seconds=decoded.update_seconds,
            attack_simulation_seconds=decoded.simulation_seconds,
            cluster_seconds=cluster,
            critical_worker=critical,
            link_gbps=self.link_gbps,
            worker_compute_seconds=tuple(compute.get(j) for j in range(n)),
            worker_bytes_in=tuple(
                rnd.bytes_from.get(j) if j in compute else None for j in range(n)
            ),
            worker_bytes_out=tuple(rnd.bytes_to.get(j) for j in range(n)),
            compute_clipped=tuple(sorted(rnd.compute_clipped & set(used))),
            ps_link_seconds=transfer_seconds(rnd.bytes_in + rnd.bytes_out, self.link_gbps),
            decode_cpu_seconds=decoded.cpu_seconds,
            attack_simulation_cpu_seconds=decoded.simulation_cpu_seconds,
            bytes_in=rnd.bytes_in,
            bytes_out=rnd.bytes_out,
            received=len(used),
            vote="digest" if rnd.digest_mode else "full",
            payload_requests=len(rnd.asked),
            erasures=tuple(erasures),
            adversaries_located=tuple(located),
            liars=tuple(sorted(rnd.plan.liars)),
            attack=rnd.plan.attack,
            attack_simulated_at_ps=rnd.plan.simulated_at_ps,
            failed=not ok,
            attempts=rnd.attempt + 1,
            error=error,
        )

    # -- checkpoints

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        """(params, optimizer state, extra) for ``RunDir.save_checkpoint``.

        A stateful aggregation (centered clipping's momenta and centre) travels with the
        optimizer's arrays under the ``code_`` prefix.
        """
        arrays = dict(self.sgd.state_dict())
        code_state = getattr(self.code, "state_dict", None)
        if callable(code_state):
            arrays.update({_CODE_STATE + k: v for k, v in code_state().items()})
        return self.params, arrays, {"totals": self.totals.to_dict()}

    def restore(
        self, params: np.ndarray, optimizer_state: dict[str, np.ndarray], extra: dict[str, Any]
    ) -> None:
        """Load a checkpoint written from ``state()``; ``completed_rounds`` comes from it."""
        params = np.asarray(params)
        if params.shape != (self.dim,) or params.dtype != np.float32:
            raise ConfigError(
                f"checkpoint parameters have shape {params.shape} / {params.dtype}, "
                f"the task has ({self.dim},) float32: was the run's task changed?"
            )
        self.params = params.copy()
        code_state = {
            k[len(_CODE_STATE) :]: v
            for k, v in optimizer_state.items()
            if k.startswith(_CODE_STATE)
        }
        load = getattr(self.code, "load_state_dict", None)
        if callable(load):
            load(code_state)
        self.sgd.load_state_dict(
            {k: v for k, v in optimizer_state.items() if not k.startswith(_CODE_STATE)}
        )
        totals = extra.get("totals", {})
        self.totals = EngineTotals(
            completed_rounds=int(totals.get("completed_rounds", 0)),
            failed_rounds=int(totals.get("failed_rounds", 0)),
            consecutive_failures=0,  # a resumed run gets a fresh failure budget
            adversaries_located=int(totals.get("adversaries_located", 0)),
        )
        self.attempt = 0
