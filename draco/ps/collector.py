"""The payloads of one attempt of a round, validated as they arrive: ``RoundCollector``.

The asyncio shell (``draco.net.server``) offers each answer and asks whether the attempt can
close; the engine (``draco.ps.engine``) decodes what was collected.

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
  baselines' usable rows). ``RoundEngine.finish`` reports such a payload as an erasure and leaves it
  out of the metrics (``_nonfinite``), as a screened payload was; the connection stays.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from draco.core.digests import GroupDigestVote, vote_digests
from draco.ps.digest_vote import DigestVoteConfig, code_groups
from draco.ps.interfaces import CodeLike
from draco.ps.plan import RoundPlan


class Verdict(enum.Enum):
    """What ``RoundCollector.offer`` (``offer_digest``, ``check_payload``) made of a message."""

    ACCEPTED = "accepted"
    STALE = "stale"  # for an earlier round: ignored
    # (No "erasure but the connection stays" verdict: ``offer`` does not read values; the
    # decoders erase NaN/Inf payloads.)
    VIOLATION = "violation"  # erasure AND a protocol violation: close the connection


@dataclass(frozen=True)
class Offer:
    verdict: Verdict
    reason: str = ""


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
        return tuple(tuple(g) for g in code_groups(self.code))

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
