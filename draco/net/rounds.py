"""The round engine: the pure logic of synchronous DRACO rounds (no sockets, no clock).

The asyncio shell (``draco.net.server``) owns the connections and the deadline; this module
decides everything else::

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

Validation of a payload (``RoundCollector.offer``), ordered by (round index, attempt):

- an earlier round, or an earlier attempt of this round: a straggler's stale payload,
  ignored (never a violation: a worker answers every RoundStart it read);
- a later round or attempt, a second payload for this attempt, a wrong dtype or shape: a
  protocol violation (erasure for this attempt; the shell closes the connection);
- non-finite values (NaN/Inf): NOT looked for here. A check would read every payload once
  more on the receive path (about half again the receiver's CPU of a raw ``recv_into``,
  benchmarks/results.md); the decoders read every byte anyway and treat a non-finite
  payload as an erasure (``draco.core.vote``: the loser check and ``repetition_ready``;
  ``draco.core.cyclic_decoder``: non-finite projections and recovery checks; the
  baselines' usable rows). ``finish`` reports such a payload as an erasure and leaves it
  out of the metrics (``_nonfinite``), as a screened payload was; the connection stays.
"""

from __future__ import annotations

import enum
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from draco.core.decoder_types import all_finite
from draco.core.digests import (
    DEFAULT_DIGEST_BYTES,
    DEFAULT_KEY_BYTES,
    GroupDigestVote,
    check_digest_bytes,
    decode_repetition_digests,
    payload_digest,
    vote_digests,
)
from draco.errors import ConfigError, DecodeError
from draco.ps.optim import SGD

# Domain-separation tags for the seeded choices (so they never share a stream).
_LIAR_TAG = 0x11A5
_ATTACK_TAG = 0xA77AC
_CODE_STATE = "code_"  # checkpoint array prefix of the code's (aggregator's) state


class CodeLike(Protocol):
    """The part of ``draco.core.codes.Code`` the engine uses."""

    name: str
    n_workers: int
    n_adversaries: int
    n_partitions: int
    payload_dtype: np.dtype

    def ready(self, received: Mapping[int, np.ndarray]) -> bool: ...

    def decode(
        self, received: Mapping[int, np.ndarray], rng: np.random.Generator | None = None
    ) -> Any: ...


class AttackLike(Protocol):
    """The part of ``draco.core.attacks.Attack`` the engine uses."""

    @property
    def name(self) -> str: ...

    @property
    def omniscient(self) -> bool: ...

    def apply_all(
        self,
        owns: Sequence[np.ndarray],
        *,
        rngs: Sequence[np.random.Generator],
        honest: np.ndarray | None = None,
        n_workers: int,
        n_adversaries: int,
    ) -> list[np.ndarray]: ...


# ----------------------------------------------------------------------------- the plan


def choose_liars(
    n_workers: int, n_liars: int, round_index: int, seed: int, schedule: str
) -> frozenset[int]:
    """The workers that lie in ``round_index``: a seeded choice of ``n_liars`` ids.

    ``schedule="random"``: a fresh choice every round, a pure function of (seed, round).
    ``schedule="fixed"``: one choice for the whole run, a pure function of seed.
    """
    if schedule == "random":
        rng = np.random.default_rng([seed, round_index, _LIAR_TAG])
    elif schedule == "fixed":
        rng = np.random.default_rng([seed, _LIAR_TAG])
    else:
        raise ConfigError(f"adversary schedule must be 'random' or 'fixed', got {schedule!r}")
    return frozenset(int(j) for j in rng.choice(n_workers, size=n_liars, replace=False))


def attack_seed(seed: int, round_index: int, worker: int) -> int:
    """Seed of worker ``worker``'s attack randomness in ``round_index`` (63-bit int)."""
    ss = np.random.SeedSequence([seed, round_index, worker, _ATTACK_TAG])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class RoundPlan:
    """Who lies in a round and how.

    Attributes
    ----------
    round_index : int
        The round (= number of completed rounds before it).
    liars : frozenset[int]
        Scheduled liars (empty without an attack).
    attack : str or None
        The attack's name (None: an honest round).
    simulated_at_ps : bool
        The attack is omniscient and applied by the PS to the liars' payloads.
    seed : int
        The run's seed (attack seeds derive from it).
    """

    round_index: int
    liars: frozenset[int]
    attack: str | None
    simulated_at_ps: bool
    seed: int

    def instruction(self, worker: int) -> tuple[str | None, int]:
        """(attack, attack_seed) for worker's RoundStart: attack None = compute honestly."""
        lie = worker in self.liars and not self.simulated_at_ps
        return (self.attack if lie else None), attack_seed(self.seed, self.round_index, worker)


# ----------------------------------------------------------------------------- collecting


class Verdict(enum.Enum):
    """What ``RoundCollector.offer`` (``offer_digest``, ``check_payload``) made of a message."""

    ACCEPTED = "accepted"
    STALE = "stale"  # for an earlier round: ignored
    # (No "erasure but the connection stays" verdict: ``offer`` does not read values; the
    # decoders erase NaN/Inf payloads.)
    VIOLATION = "violation"  # erasure AND a protocol violation: close the connection


#: The votes ``--vote`` offers: ``full`` (every worker sends its payload) and ``digest``
#: (digest-first: every worker sends a keyed digest, the PS fetches one payload per group).
VOTES = ("full", "digest")


@dataclass(frozen=True)
class DigestVoteConfig:
    """Limits of the digest-first vote (``draco-ps --vote digest``).

    Attributes
    ----------
    digest_bytes : int
        BLAKE2b output length, 16..64 bytes (default 32).
    max_payload_requests : int or None
        Payload requests per group and attempt before the group is given up (the attempt
        then fails and is retried). None: s+1, enough to reach an honest member of any
        majority (a majority of >= s+1 holds at most s liars) when every asked member
        answers.
    payload_timeout : float
        Seconds a member asked for its payload has before the PS asks the next one.
    """

    digest_bytes: int = DEFAULT_DIGEST_BYTES
    max_payload_requests: int | None = None
    payload_timeout: float = 10.0

    def __post_init__(self) -> None:
        check_digest_bytes(self.digest_bytes)
        if self.max_payload_requests is not None and (
            isinstance(self.max_payload_requests, bool)
            or not isinstance(self.max_payload_requests, int)
            or self.max_payload_requests < 1
        ):
            raise ConfigError(
                f"--max-payload-requests must be an integer >= 1, got {self.max_payload_requests!r}"
            )
        t = self.payload_timeout
        if (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not (math.isfinite(t) and t > 0)
        ):
            raise ConfigError(f"--payload-timeout must be a positive number of seconds, got {t!r}")

    def requests_per_group(self, s: int) -> int:
        return self.max_payload_requests if self.max_payload_requests is not None else s + 1


def check_vote(vote: str, code: Any) -> None:
    """ConfigError unless ``vote`` is one of VOTES and fits ``code``.

    The digest vote needs bit-identical honest payloads: the repetition code with the exact
    vote. The tolerance vote (``rtol``) compares values, so it keeps full payloads; the
    cyclic code and the baselines need every payload.
    """
    if vote not in VOTES:
        raise ConfigError(f"--vote must be one of {', '.join(VOTES)}, got {vote!r}")
    if vote == "digest":
        name = getattr(code, "name", code)
        if name != "repetition" or not hasattr(code, "groups"):
            raise ConfigError(
                f"--vote digest works with --code repetition only (the {name!r} code needs "
                "every full payload): use --vote full"
            )
        if getattr(code, "rtol", None) is not None:
            raise ConfigError(
                "--vote digest needs bit-identical payloads; the tolerance vote (rtol) compares "
                "values and keeps full payloads: use --vote full"
            )


@dataclass(frozen=True)
class Offer:
    verdict: Verdict
    reason: str = ""


def _nonfinite(payloads: Mapping[int, np.ndarray], among: Iterable[int]) -> set[int]:
    """The workers in ``among`` whose payload holds NaN/Inf: one read of each of those only.

    ``finish`` asks about the few payloads a decode erased (or, after a failed decode, all
    of them: a rare path) so that they count as erasures, as if screened on arrival.
    """
    return {j for j in among if j in payloads and not all_finite(payloads[j])}


def _code_groups(code: Any) -> tuple[tuple[int, ...], ...]:
    """The repetition code's groups (``check_vote`` made sure the code has them)."""
    return tuple(tuple(int(j) for j in g) for g in code.groups)


class RoundCollector:
    """The payloads of one round, validated as they arrive.

    Parameters
    ----------
    plan : RoundPlan
        The round's plan.
    code : CodeLike
        The run's code (``ready`` decides early close).
    dim : int
        Payload length d.
    """

    def __init__(
        self,
        plan: RoundPlan,
        code: CodeLike,
        dim: int,
        attempt: int = 0,
        *,
        digest_key: bytes | None = None,
        digest: DigestVoteConfig | None = None,
    ) -> None:
        self.plan = plan
        # Which attempt of the round this is: payloads carry it, so answers to a failed
        # earlier attempt (which the workers computed before they read the retry) are told
        # apart from answers to this one and ignored.
        self.attempt = int(attempt)
        self.code = code
        self.dim = dim
        self.dtype = np.dtype(code.payload_dtype)
        self.received: dict[int, np.ndarray] = {}
        self.erased: dict[int, str] = {}  # worker -> reason
        # Cluster-time bookkeeping (``cluster_seconds``): per worker, the reported compute
        # time bounded by what the PS observed, and the bytes of its RoundStart and payload.
        self.compute_seconds: dict[int, float] = {}
        self.compute_clipped: set[int] = set()
        self.sent_at: dict[int, float] = {}
        self.bytes_to: dict[int, int] = {}
        self.bytes_from: dict[int, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self._ready = False
        # Digest-first vote (``digest_key`` given): digests first, then one payload per group.
        self.digest_key = digest_key
        self.digest_config = digest or DigestVoteConfig()
        self.digests: dict[int, bytes] = {}
        self.verified: dict[int, np.ndarray] = {}  # group index -> payload with its digest
        self.fetch_liars: dict[int, str] = {}  # worker -> why (payload != its own digest)
        self.fetch_failed: dict[int, str] = {}  # worker -> why it did not deliver (timeout...)
        self.asked: dict[int, int] = {}  # worker -> group, payload requests sent
        self._fetch_votes: dict[int, GroupDigestVote] = {}  # group -> its vote, once planned
        self._fetch_order: dict[int, list[int]] = {}
        self._host_load: dict[Any, int] = {}  # host -> groups it serves this attempt

    @property
    def index(self) -> int:
        return self.plan.round_index

    @property
    def digest_mode(self) -> bool:
        """True for a digest-first attempt (``RoundStart.digest_key`` non-empty)."""
        return self.digest_key is not None

    def delivered(self, worker: int) -> bool:
        """``worker`` answered this attempt usably (a payload, or a digest)."""
        return worker in self.received or worker in self.digests

    def sent(self, worker: int, nbytes: int, at: float | None = None) -> None:
        """The shell queued ``worker``'s RoundStart (``nbytes`` on the wire) at time ``at``."""
        self.bytes_out += int(nbytes)
        self.bytes_to[worker] = self.bytes_to.get(worker, 0) + int(nbytes)
        if at is not None:
            self.sent_at.setdefault(worker, float(at))

    def offer(
        self,
        worker: int,
        round_index: int,
        payload: np.ndarray,
        compute_seconds: float = 0.0,
        wire_bytes: int = 0,
        received_at: float | None = None,
        *,
        attempt: int = 0,
    ) -> Offer:
        """Validate and keep one worker's payload.

        Parameters
        ----------
        worker : int
            The authenticated sender's id (never taken from the message).
        round_index : int
            The round the payload claims to be for.
        payload : np.ndarray
            Should be ``(dim,)`` of the code's payload dtype. Its values are not read: a
            NaN/Inf payload is accepted here and erased by the decoder (module docstring).
        compute_seconds : float
            The worker's reported compute time (metrics only; not trusted otherwise).
        wire_bytes : int
            Frame size on the wire, for the byte counter.
        received_at : float, optional
            When the payload arrived (the clock of ``sent``). The reported compute time is
            untrusted: it is bounded by ``received_at - sent_at[worker]``, the wall time the
            PS saw between sending this worker its RoundStart and receiving its payload
            (non-finite or negative reports count as 0).
        attempt : int
            The attempt of ``round_index`` the payload answers (``Gradient.attempt``).
        """
        self.bytes_in += int(wire_bytes)
        order = self._check_order(worker, round_index, attempt, "payload")
        if order is not None:
            return order
        if self.digest_mode:
            return self._erase(worker, Verdict.VIOLATION, "a full payload in a digest-first round")
        if not isinstance(payload, np.ndarray) or payload.dtype != self.dtype:
            got = getattr(payload, "dtype", type(payload).__name__)
            return self._erase(worker, Verdict.VIOLATION, f"dtype {got}, expected {self.dtype}")
        if payload.shape != (self.dim,):
            return self._erase(
                worker, Verdict.VIOLATION, f"shape {payload.shape}, expected ({self.dim},)"
            )
        # No finiteness pass here (module docstring): the decoders erase NaN/Inf payloads.
        self.received[worker] = payload
        self.bytes_from[worker] = int(wire_bytes)
        self.compute_seconds[worker] = self._bounded_compute(worker, compute_seconds, received_at)
        # _ready stays as it is: once True, more payloads cannot make the round undecodable.
        return Offer(Verdict.ACCEPTED)

    def _check_order(self, worker: int, round_index: int, attempt: int, what: str) -> Offer | None:
        """Stale / future / duplicate checks shared by payloads and digests (None: go on)."""
        if round_index < self.index:
            return Offer(Verdict.STALE, f"{what} for round {round_index} arrived late")
        if round_index == self.index and attempt < self.attempt:
            return Offer(
                Verdict.STALE, f"answer to attempt {attempt} of round {round_index} arrived late"
            )
        if not 0 <= worker < self.code.n_workers:
            return Offer(Verdict.VIOLATION, f"worker id {worker} out of range")
        if round_index > self.index:
            return self._erase(worker, Verdict.VIOLATION, f"{what} for future round {round_index}")
        if attempt > self.attempt:
            return self._erase(
                worker, Verdict.VIOLATION, f"{what} for attempt {attempt}, never started"
            )
        if self.delivered(worker) or worker in self.erased:
            # Already counted once: the first answer stays out, the duplicate is a violation.
            self.erased.setdefault(worker, f"duplicate {what}")
            self.received.pop(worker, None)
            self.digests.pop(worker, None)
            self._ready = False
            return Offer(Verdict.VIOLATION, f"second {what} in one attempt")
        return None

    def offer_digest(
        self,
        worker: int,
        round_index: int,
        digest: bytes,
        compute_seconds: float = 0.0,
        wire_bytes: int = 0,
        received_at: float | None = None,
        *,
        attempt: int = 0,
    ) -> Offer:
        """Validate and keep one worker's digest (digest-first vote; see ``offer``).

        A digest of the wrong length, or a digest in a full-payload round, is a violation.
        """
        self.bytes_in += int(wire_bytes)
        order = self._check_order(worker, round_index, attempt, "digest")
        if order is not None:
            return order
        if not self.digest_mode:
            return self._erase(worker, Verdict.VIOLATION, "a digest in a full-payload round")
        n = self.digest_config.digest_bytes
        if not isinstance(digest, bytes) or len(digest) != n:
            got = len(digest) if isinstance(digest, bytes) else type(digest).__name__
            return self._erase(worker, Verdict.VIOLATION, f"digest of {got} bytes, expected {n}")
        self.digests[worker] = digest
        self.bytes_from[worker] = int(wire_bytes)
        self.compute_seconds[worker] = self._bounded_compute(worker, compute_seconds, received_at)
        return Offer(Verdict.ACCEPTED)

    # -- digest-first: the fetch phase ---------------------------------------------------

    def _eligible_digests(self) -> dict[int, bytes]:
        """Digests that can back a value: the PS-simulated liars' are left out (their
        payloads will be replaced, exactly as ``readiness_input`` leaves them out)."""
        if self.plan.simulated_at_ps:
            return {j: d for j, d in self.digests.items() if j not in self.plan.liars}
        return dict(self.digests)

    def _groups(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(g) for g in _code_groups(self.code))

    def group_of(self, worker: int) -> int:
        """The repetition group of ``worker``."""
        for g, members in enumerate(self._groups()):
            if worker in members:
                return g
        raise ValueError(f"worker {worker} is in no group")

    def group_decided(self, group: int) -> bool:
        """``group`` already has s+1 equal eligible digests: its fetch may start now, before
        the other groups are decided (the fetch overlaps the stragglers' answers)."""
        members = self._groups()[group]
        eligible = {j: d for j, d in self._eligible_digests().items() if j in members}
        return vote_digests([members], eligible, self.code.n_adversaries)[0].digest is not None

    def plan_group(self, group: int, hosts: Mapping[int, Any] | None = None) -> GroupDigestVote:
        """Vote in ``group`` and order its majority for the payload requests.

        Spread: the candidates start at a rotation of the majority that moves with the round
        and attempt (so the same worker does not serve every round), then members on hosts
        that serve fewer groups of this attempt go first (``hosts``: worker -> host; None:
        every worker on its own host). A group's winner does not change once it has s+1
        equal digests (unless more than s members lie), so planning early is safe.
        """
        members = self._groups()[group]
        eligible = {j: d for j, d in self._eligible_digests().items() if j in members}
        vote = vote_digests([members], eligible, self.code.n_adversaries)[0]
        self._fetch_votes[group] = vote
        backers = list(vote.backers)
        if not backers:
            self._fetch_order[group] = []
            return vote
        shift = (self.index + self.attempt + group) % len(backers)
        ring = backers[shift:] + backers[:shift]

        def host(j: int) -> Any:
            return hosts.get(j, ("worker", j)) if hosts is not None else ("worker", j)

        ring.sort(key=lambda j: self._host_load.get(host(j), 0))  # stable: rotation breaks ties
        self._host_load[host(ring[0])] = self._host_load.get(host(ring[0]), 0) + 1
        self._fetch_order[group] = ring
        return vote

    def plan_fetch(self, hosts: Mapping[int, Any] | None = None) -> None:
        """Close the digest phase: plan every group not planned yet (``plan_group``)."""
        for g in range(len(self._groups())):
            if g not in self._fetch_votes:
                self.plan_group(g, hosts)

    @property
    def fetch_groups(self) -> list[int]:
        """Planned groups with a majority digest (the fetch phase serves them)."""
        return sorted(g for g, v in self._fetch_votes.items() if v.digest is not None)

    def next_candidate(self, group: int) -> int | None:
        """The next majority member to ask for ``group``'s payload, or None (given up).

        Bounded by ``DigestVoteConfig.requests_per_group``; members that failed or were
        found lying are skipped. Members whose digest joined the majority after the group was
        planned (a group is planned at its first s+1 equal digests) come after the planned
        ones: when the first backers died or froze between digest and payload, a later
        honest backer still serves the group in this attempt.
        """
        limit = self.digest_config.requests_per_group(self.code.n_adversaries)
        if group in self.verified or sum(1 for g in self.asked.values() if g == group) >= limit:
            return None
        order = self._fetch_order.get(group, [])
        vote = self._fetch_votes.get(group)
        if vote is not None and vote.digest is not None:
            eligible = self._eligible_digests()
            order += [
                j
                for j in self._groups()[group]
                if j not in order and eligible.get(j) == vote.digest
            ]
        for j in order:
            if j not in self.asked and j not in self.fetch_failed and j not in self.erased:
                return j
        return None

    def requested(self, worker: int, group: int, nbytes: int) -> None:
        """The shell sent ``worker`` a PayloadRequest for ``group`` (``nbytes`` on the wire)."""
        self.asked[worker] = group
        self.bytes_out += int(nbytes)
        self.bytes_to[worker] = self.bytes_to.get(worker, 0) + int(nbytes)

    def check_payload(
        self, worker: int, round_index: int, attempt: int, payload: Any, wire_bytes: int = 0
    ) -> Offer:
        """A Payload answering a request: ACCEPTED means "hash it and call ``verify``".

        STALE for another attempt or a request given up (timed out: the member's late answer
        is legal but useless); VIOLATION for a wrong dtype or shape.
        """
        self.bytes_in += int(wire_bytes)
        if (round_index, attempt) != (self.index, self.attempt) or worker not in self.asked:
            return Offer(Verdict.STALE, "payload for a request no longer pending")
        if worker in self.fetch_failed or self.asked[worker] in self.verified:
            return Offer(Verdict.STALE, "payload after its request was given up")
        self.bytes_from[worker] = self.bytes_from.get(worker, 0) + int(wire_bytes)
        if not isinstance(payload, np.ndarray) or payload.dtype != self.dtype:
            got = getattr(payload, "dtype", type(payload).__name__)
            self.fetch_failed[worker] = f"payload dtype {got}"
            return Offer(Verdict.VIOLATION, f"dtype {got}, expected {self.dtype}")
        if payload.shape != (self.dim,):
            self.fetch_failed[worker] = f"payload shape {payload.shape}"
            return Offer(Verdict.VIOLATION, f"shape {payload.shape}, expected ({self.dim},)")
        return Offer(Verdict.ACCEPTED)

    def verify(self, worker: int, payload: np.ndarray, digest: bytes) -> bool:
        """Record the fetched ``payload`` of ``worker`` whose keyed digest is ``digest``.

        True: it matches the group's majority digest and is the group's value. False: it
        does not match the digest the worker itself sent, so the worker is located as a
        liar (the shell asks the next member).
        """
        g = self.asked[worker]
        if g in self.verified:
            return True
        if digest == self._fetch_votes[g].digest:
            self.verified[g] = payload
            return True
        self.fetch_liars[worker] = "payload does not match its own digest"
        return False

    def give_up(self, worker: int, reason: str) -> None:
        """``worker`` did not deliver its requested payload (timeout, disconnect)."""
        self.fetch_failed.setdefault(worker, reason)

    def _bounded_compute(self, worker: int, reported: Any, received_at: float | None) -> float:
        try:
            cs = float(reported)
        except (TypeError, ValueError):
            cs = math.nan
        if not (math.isfinite(cs) and cs >= 0):
            cs = 0.0
            self.compute_clipped.add(worker)
        sent_at = self.sent_at.get(worker)
        if received_at is not None and sent_at is not None:
            observed = max(0.0, float(received_at) - sent_at)
            if cs > observed:
                cs = observed
                self.compute_clipped.add(worker)
        return cs

    def _erase(self, worker: int, verdict: Verdict, reason: str) -> Offer:
        self.erased.setdefault(worker, reason)
        return Offer(verdict, reason)

    def erase(self, worker: int, reason: str) -> None:
        """``worker`` will not deliver this round (disconnected, not joined)."""
        if not self.delivered(worker):
            self.erased.setdefault(worker, reason)

    @property
    def accounted(self) -> int:
        """Workers that delivered or are known not to."""
        return len(self.received) + len(self.digests) + len(self.erased)

    @property
    def complete(self) -> bool:
        """Every worker delivered or is erased: nothing more can arrive."""
        return self.accounted >= self.code.n_workers

    def readiness_input(self) -> dict[int, np.ndarray]:
        """A snapshot of the payloads that can make the round decodable (for ``code.ready``).

        A new dict (safe to hand to another thread while more payloads arrive). The
        scheduled liars of a PS-simulated attack are left out: their payloads will be
        replaced, so only the others can make the round decodable.
        """
        if self.plan.simulated_at_ps:
            return {j: p for j, p in self.received.items() if j not in self.plan.liars}
        return dict(self.received)

    def mark_ready(self) -> None:
        """``code.ready`` said True on a snapshot: readiness only grows with more payloads
        (ready means "exact whatever the missing workers send"), so the round can close."""
        self._ready = True

    @property
    def known_ready(self) -> bool:
        """Readiness as last established (no ``code.ready`` call)."""
        return self._ready

    @property
    def ready(self) -> bool:
        """The code can decode exactly whatever the missing workers would send.

        Calls ``code.ready`` inline when not yet known; the server runs expensive codes'
        checks off its event loop instead (``readiness_input`` + ``mark_ready``).
        """
        if self.digest_mode:
            if not self._ready and self.digests:
                votes = vote_digests(
                    self._groups(), self._eligible_digests(), self.code.n_adversaries
                )
                self._ready = all(v.digest is not None for v in votes)
            return self._ready
        if not self._ready and self.received:
            self._ready = bool(self.code.ready(self.readiness_input()))
        return self._ready

    @property
    def should_close(self) -> bool:
        return self.complete or self.ready

    @property
    def should_close_known(self) -> bool:
        """``should_close`` as far as known without calling ``code.ready``."""
        return self.complete or self._ready


# ----------------------------------------------------------------------------- cluster time

DEFAULT_LINK_GBPS = 10.0


def transfer_seconds(nbytes: float, link_gbps: float) -> float:
    """Seconds to move ``nbytes`` over a link of ``link_gbps`` gigabits per second."""
    return float(nbytes) * 8.0 / (float(link_gbps) * 1e9)


def cluster_seconds(
    worker_compute: Mapping[int, float],
    worker_bytes: Mapping[int, int],
    link_gbps: float,
    ps_seconds: float,
) -> tuple[float, int | None]:
    """A round's critical path on a cluster of one node per worker (docs/cluster_time.md).

    ``max_j (compute_j + transfer(bytes_j)) + ps_seconds`` over the workers whose payloads
    the round used (the keys of ``worker_compute``); ``bytes_j`` = its RoundStart (the model
    broadcast) plus its payload frame. Returns (seconds, the worker on the critical path).
    """
    worst, who = 0.0, None
    for j in sorted(worker_compute):
        t = worker_compute[j] + transfer_seconds(worker_bytes.get(j, 0), link_gbps)
        if who is None or t > worst:
            worst, who = t, j
    return worst + float(ps_seconds), who


# ----------------------------------------------------------------------------- the engine


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


@dataclass
class RoundRecord:
    """The outcome of ``finish``: the metrics record and whether the model moved."""

    record: dict[str, Any]
    ok: bool
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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
    attack : AttackLike or None
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
        attack: AttackLike | None = None,
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

    # -- state

    @property
    def next_round(self) -> int:
        """Index of the next round to run (= completed rounds)."""
        return self.totals.completed_rounds

    @property
    def stopped(self) -> bool:
        """Too many consecutive failed rounds: the run cannot go on."""
        return self.totals.consecutive_failures >= self.max_failed_rounds

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
            for j in _code_groups(self.code)[g]:
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
    ) -> RoundRecord:
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
        RoundRecord
            ``record`` is the metrics record (contract in docs/architecture.md).
        """
        if rnd is not self.current:
            raise RuntimeError("finish() takes the collector of the current round")
        self.current = None
        for j in range(self.code.n_workers):
            rnd.erase(j, "no payload before the round closed")
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
                    _code_groups(self.code),
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
        t1 = self._clock()
        if result is not None and not error:
            # Step 3: the decoded SUM over partitions -> the mean over the global batch.
            mean_grad = gradient.astype(np.float32, copy=False) / np.float32(self.code.n_partitions)
            self.params = self.sgd.step(self.params, mean_grad)
        t2 = self._clock()
        c2 = time.thread_time()
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
            compute, per_worker_bytes, self.link_gbps, (t1 - t0) + (t2 - t1)
        )
        record: dict[str, Any] = {
            "round": rnd.index,
            "wall_seconds": 0.0,  # the shell fills in the full wall time
            "wait_seconds": float(wait_seconds),
            "compute_seconds": max(compute.values(), default=0.0),
            "decode_seconds": t1 - t0,
            "update_seconds": t2 - t1,
            "attack_simulation_seconds": t0 - ts,
            "cluster_seconds": cluster,
            "critical_worker": critical,
            "link_gbps": self.link_gbps,
            # per worker id; None = not used this round (missing, erased) / not sent
            "worker_compute_seconds": [compute.get(j) for j in range(n)],
            "worker_bytes_in": [rnd.bytes_from.get(j) if j in compute else None for j in range(n)],
            "worker_bytes_out": [rnd.bytes_to.get(j) for j in range(n)],
            "compute_clipped": sorted(rnd.compute_clipped & set(used)),
            "ps_link_seconds": transfer_seconds(rnd.bytes_in + rnd.bytes_out, self.link_gbps),
            # PS CPU time: the decode thread's here; the shell adds its event loop's
            "decode_cpu_seconds": c2 - c0,
            "attack_simulation_cpu_seconds": c0 - cs,
            "ps_cpu_seconds": c2 - c0,
            "bytes_in": rnd.bytes_in,
            "bytes_out": rnd.bytes_out,
            "received": len(used),
            "vote": "digest" if rnd.digest_mode else "full",
            "payload_requests": len(rnd.asked),
            "erasures": erasures,
            "adversaries_located": located,
            "liars": sorted(rnd.plan.liars),
            "attack": rnd.plan.attack,
            "attack_simulated_at_ps": rnd.plan.simulated_at_ps,
            "failed": not ok,
            "attempts": rnd.attempt + 1,
        }
        if ok:
            self.totals.completed_rounds += 1
            self.totals.consecutive_failures = 0
            self.totals.adversaries_located += len(located)
            self.attempt = 0
        else:
            record["error"] = error
            self.totals.failed_rounds += 1
            self.totals.consecutive_failures += int(count_failure)
            self.attempt += 1
        return RoundRecord(record=record, ok=ok, error=error)

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
