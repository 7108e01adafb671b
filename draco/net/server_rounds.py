"""Rounds and their attempts: broadcast, answers, close, decode off the loop, retry.

Broadcast RoundStart(round, attempt) to every seated worker, offer each answer to the
attempt's collector, close the attempt as soon as it may (``server_ready``) or at
``--round-timeout``, then decode + update in the helper thread (the loop keeps serving
handshakes meanwhile). A failed attempt is retried under the next attempt number after a
pause that doubles (``RETRY_BACKOFF_BASE`` .. ``RETRY_BACKOFF_CAP``) and ends early once every
seat is taken again. Attempts made while workers were not connected do not count against
``--max-failed-rounds``; they are bounded by ``--rejoin-timeout`` seconds instead.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import numpy as np

from draco.errors import ProtocolError
from draco.net import messages as m
from draco.net.peer import Peer
from draco.net.server_fetch import PayloadFetch
from draco.net.server_state import log, source_of
from draco.ps.collector import RoundCollector, Verdict
from draco.ps.record import AttemptRecord, AttemptTiming, LoopUsage, RoundRecord

RETRY_BACKOFF_BASE = 0.25
RETRY_BACKOFF_CAP = 4.0
# At most one warning about a round's failed attempts per this many seconds.
WARN_INTERVAL = 5.0
# A successful attempt that waited longer than this fraction of --round-timeout is warned
# about (rate-limited): the deadline has little margin over the measured round time.
NEAR_TIMEOUT = 0.5
# Erasure reason of a worker that held no seat when the attempt was broadcast (with the ones
# lost during it, such a failed attempt is waited out under --rejoin-timeout, not counted).
_ABSENT = "not connected"


def _thread_usage() -> resource.struct_rusage | None:
    """This thread's resource usage (user/system CPU, faults); None where not supported."""
    who = getattr(resource, "RUSAGE_THREAD", None)  # Linux
    return resource.getrusage(who) if who is not None else None


class RoundDriver(PayloadFetch):
    """Runs rounds: attempts until one decodes, the run stops, or a stop is requested."""

    async def _run_round(self) -> None:
        """One round: attempts until one decodes, the run stops, or a stop request.

        Writes one record per round (``round_done``): the successful attempt's, or the last
        failed one's when the run gives up, with ``attempts`` and the retry time in it.
        """
        engine = self.engine
        t_round = time.perf_counter()
        absent_since: float | None = None  # first failed attempt with workers missing
        last_error = ""
        self._timed_out.clear()
        self._late_answer_seconds = 0.0
        while True:
            attempt = await self._run_attempt()
            if attempt is None:
                return  # shutting down: leave the round unfinished (the model stays)
            result, timing, absent, silent = attempt
            if result.ok:
                break
            last_error = result.error
            if engine.diverged:
                break  # a retry would recompute the same gradients: the run ends here
            now = time.perf_counter()
            self._warn_failed(result, absent, silent)
            if absent or silent:
                absent_since = now if absent_since is None else absent_since
                if now - absent_since > self.config.rejoin_timeout:
                    self.request_stop(
                        f"round {result.round} could not be decoded for "
                        f"{now - absent_since:.0f} s: {self._who(absent, silent)} "
                        f"(--rejoin-timeout {self.config.rejoin_timeout:g} s); last error: "
                        f"{result.error}{self._timeout_note()}"
                    )
            else:
                absent_since = None
            if engine.stopped or self._stop_reason is not None:
                break
            failures = engine.attempt
            delay = min(RETRY_BACKOFF_CAP, RETRY_BACKOFF_BASE * 2 ** (failures - 1))
            await self._pause_before_retry(delay)
            if self._stop_reason is not None:
                return
        self._check_round_time(result)
        record = RoundRecord(
            attempt=result,
            timing=timing,
            wall_seconds=time.perf_counter() - t_round,
            # The last failed attempt's error, for the record.
            retry_error=last_error if result.attempts > 1 else "",
        )
        if self.hooks is not None:
            self.hooks.round_done(record, engine)

    def _check_round_time(self, record: AttemptRecord) -> None:
        """Warn (rate-limited) when an attempt's measured wait nears ``--round-timeout``."""
        wait, limit = record.wait_seconds, self.config.round_timeout
        now = time.monotonic()
        if record.failed or wait <= NEAR_TIMEOUT * limit:
            return
        if now - self._last_time_warning < WARN_INTERVAL:
            return
        self._last_time_warning = now
        log.warning(
            "round %d took %.3g s to collect, more than %d%% of --round-timeout %g s: a "
            "slower round will miss the deadline and be retried; consider raising it",
            record.round,
            wait,
            int(100 * NEAR_TIMEOUT),
            limit,
        )

    @staticmethod
    def _who(absent: set[int], silent: set[int]) -> str:
        parts = []
        if absent:
            parts.append(f"workers {sorted(absent)} are not connected")
        if silent:
            parts.append(f"workers {sorted(silent)} have not answered this round yet")
        return " and ".join(parts)

    def _warn_failed(self, result: AttemptRecord, absent: set[int], silent: set[int]) -> None:
        """A failed attempt: a warning at the round's first failure, then rate-limited."""
        now = time.monotonic()
        first = result.attempts == 1
        if not first and now - self._last_warning < WARN_INTERVAL:
            self._suppressed_warnings += 1
            return
        more = (
            f" ({self._suppressed_warnings} more failed attempts not logged)"
            if self._suppressed_warnings
            else ""
        )
        self._last_warning, self._suppressed_warnings = now, 0
        why = (
            f"{self._who(absent, silent)}: waiting for them"
            if absent or silent
            else f"{self.engine.totals.consecutive_failures}/{self.engine.max_failed_rounds} "
            "counted failures"
        )
        log.warning(
            "round %d attempt %d FAILED (%s): %s; model not updated, retrying%s",
            result.round,
            result.attempts - 1,
            why,
            result.error,
            more,
        )

    async def _pause_before_retry(self, delay: float) -> None:
        """Pause ``delay`` seconds before the next attempt (a stop request ends it early).

        When seats are empty, the pause also ends as soon as every seat is taken again: the
        missing workers are what the round waits for.
        """
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        waiting_for_seats = len(self.seats) < self.n_workers
        await self._sleep_until(
            loop.time() + delay, lambda: waiting_for_seats and len(self.seats) >= self.n_workers
        )

    async def _run_attempt(
        self,
    ) -> tuple[AttemptRecord, AttemptTiming, set[int], set[int]] | None:
        """One attempt: broadcast, collect until close, decode + update off the loop.

        Returns (the engine's record, the shell's timing, absent, silent), or None when a
        stop was requested meanwhile.
        absent: workers that held no seat during the attempt. silent: seated workers that
        delivered nothing and have answered no attempt of this round yet (still computing
        their first answer, frozen, or not reading). A failed attempt with either counts
        against ``--rejoin-timeout`` (time), not ``--max-failed-rounds``: retrying cannot
        help until they are back, and the retry's RoundStart is queued behind their work.
        """
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        engine = self.engine
        t0 = time.perf_counter()
        cpu0 = time.thread_time()  # the event loop's CPU time: broadcast + ingest
        usage0 = _thread_usage()
        self._ready_cpu = 0.0
        self._started_at = loop.time()
        rnd = engine.start_round()
        key = (rnd.index, rnd.attempt)
        self._round = rnd
        self._absent_in_attempt = set()
        self._wake.clear()
        self._broadcast(rnd, engine.params)
        self._maybe_close_round(rnd)
        timed_out = False
        if not rnd.should_close_known:
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.round_timeout)
            except asyncio.TimeoutError:
                timed_out = not rnd.complete
        self._round = None  # from here, payloads for this attempt are stale
        if self._stop_reason is not None:
            self._end_fetch()
            return None
        if timed_out:
            self._timed_out[key] = t0
        fetch_seconds = 0.0
        if rnd.digest_mode:
            t_fetch = time.perf_counter()
            await self._fetch(rnd)
            fetch_seconds = time.perf_counter() - t_fetch
            if self._stop_reason is not None:
                return None
        wait = time.perf_counter() - t0
        loop_cpu = time.thread_time() - cpu0
        usage1 = _thread_usage()
        absent = set(self._absent_in_attempt)
        silent = self._silent_workers(rnd, absent)
        counted = not absent and not silent
        result = await loop.run_in_executor(
            self._executor,
            lambda: engine.finish(rnd, wait_seconds=wait, count_failure=counted),
        )
        usage = None
        if usage0 is not None and usage1 is not None:
            # Where the loop's time went: the kernel (socket copies, TCP, page faults) vs.
            # this process's own code (framing, checks, bookkeeping).
            usage = LoopUsage(
                user_cpu_seconds=usage1.ru_utime - usage0.ru_utime,
                sys_cpu_seconds=usage1.ru_stime - usage0.ru_stime,
                minor_faults=usage1.ru_minflt - usage0.ru_minflt,
            )
        timing = AttemptTiming(
            fetch_seconds=fetch_seconds,
            loop_cpu_seconds=loop_cpu,
            loop_usage=usage,
            # The cyclic code's readiness checks ran in the helper thread during the attempt.
            ready_cpu_seconds=self._ready_cpu,
        )
        return result, timing, absent, silent

    def _broadcast(self, rnd: RoundCollector, params: np.ndarray) -> None:
        """RoundStart to every seated worker; the others are erased for the attempt.

        ``params`` is never mutated (the engine makes a new array per update), so every
        peer's transport may hold views of it until flushed.
        """
        if rnd.digest_mode:
            # Payload requests may start during the digest phase (``_fetch_early``).
            self._fetching = rnd
            self._fetch_tasks = {}
            self._fetch_hosts = {j: source_of(p) for j, p in self.seats.items()}
        for j in range(self.n_workers):
            peer = self.seats.get(j)
            if peer is None or peer.closed:
                rnd.erase(j, _ABSENT)
                self._absent_in_attempt.add(j)
                continue
            if peer.write_paused:
                # It has not read the previous round's parameters: do not queue more.
                rnd.erase(j, "not reading (send buffer full)")
                continue
            attack, seed = rnd.plan.instruction(j)
            peer.messages_in_round = 0
            sent_at = time.perf_counter()
            rnd.sent(
                j,
                peer.send(
                    m.RoundStart(
                        round_index=rnd.index,
                        params=params,
                        attack=attack,
                        attack_seed=seed,
                        attempt=rnd.attempt,
                        digest_key=rnd.digest_key or b"",
                    )
                ),
                at=sent_at,
            )

    def _silent_workers(self, rnd: RoundCollector, absent: set[int]) -> set[int]:
        """Seated workers that delivered nothing and answered no attempt of this round yet
        (still computing their first answer, frozen, or not reading)."""
        silent = set()
        for j, peer in self.seats.items():
            if rnd.delivered(j) or j in absent:
                continue
            stuck = rnd.erased.get(j, "").startswith("not reading")
            if stuck or (j not in rnd.erased and peer.conn.last_answered < (rnd.index, 0)):
                silent.add(j)
        return silent

    def _on_answer(self, peer: Peer, msg: m.Gradient | m.Digest, wire_bytes: int) -> None:
        """A worker's answer to a RoundStart: a full payload, or (digest vote) a digest."""
        j = peer.worker_id
        assert j is not None
        # The Connection checked the round rules (one answer per RoundStart, in order, none
        # for an attempt never started on this connection: protocol._check_answer).
        key = (msg.round_index, msg.attempt)
        started = self._timed_out.get(key)
        if started is not None:
            self._late_answer(j, key, time.perf_counter() - started)
        rnd = self._round
        if rnd is None or key < (rnd.index, rnd.attempt):
            return  # a straggler's payload for a closed attempt: useless, harmless
        # The collector validates either kind of answer the same way (order, duplicates).
        value: Any = msg.digest if isinstance(msg, m.Digest) else msg.payload
        offer = (rnd.offer_digest if isinstance(msg, m.Digest) else rnd.offer)(
            j,
            msg.round_index,
            value,
            msg.compute_seconds,
            wire_bytes,
            received_at=time.perf_counter(),
            attempt=msg.attempt,
        )
        if offer.verdict is Verdict.ACCEPTED and isinstance(msg, m.Digest):
            self._fetch_early(rnd, j)
        if offer.verdict is Verdict.VIOLATION:
            self.peer_violation(peer, ProtocolError(offer.reason))
        self._maybe_close_round(rnd)

    def _late_answer(self, j: int, key: tuple[int, int], seconds: float) -> None:
        """A worker answered an attempt that had hit the deadline: the round takes longer."""
        if seconds <= self._late_answer_seconds:
            return
        self._late_answer_seconds = seconds
        now = time.monotonic()
        if now - self._last_time_warning < WARN_INTERVAL:
            return  # measured (for the stop message), not logged again so soon
        self._last_time_warning = now
        log.warning(
            "round %d attempt %d hit --round-timeout %g s, but worker %d answered after %.3g s: "
            "the timeout is shorter than the measured round time",
            key[0],
            key[1],
            self.config.round_timeout,
            j,
            seconds,
        )

    def _stopped_reason(self) -> str:
        engine = self.engine
        return (
            f"round {engine.next_round}: {engine.totals.consecutive_failures} attempts in a "
            f"row failed with every worker connected and answering (--max-failed-rounds "
            f"{engine.max_failed_rounds}); model not updated in those attempts"
            f"{self._timeout_note()}"
        )

    def _timeout_note(self) -> str:
        """What the measured round time says about --round-timeout ("" if nothing)."""
        timeout = self.config.round_timeout
        if self._late_answer_seconds > 0:
            # The workers did answer, only after the deadline: say so, with the measurement.
            return (
                f". Attempts ran into --round-timeout {timeout:g} s, but answers arrived up "
                f"to {self._late_answer_seconds:.3g} s after the broadcast: the timeout is "
                "shorter than a round takes here; raise --round-timeout above that"
            )
        if self._timed_out:
            waited = time.perf_counter() - min(self._timed_out.values())
            return (
                f". {len(self._timed_out)} attempts ran into --round-timeout {timeout:g} s and "
                f"no answer to any came in the {waited:.3g} s since the first: the workers take "
                "longer than the timeout to compute a round (or to start); raise --round-timeout"
            )
        return ""
