"""The asyncio parameter server: a thin shell of sockets and timers over ``draco.ps.engine``.

Run it with ``draco-ps`` (``cli/ps.py``), e.g.::

    draco-ps keys --secret-file ps.secret --workers 15 --out tokens.txt --create-secret
    draco-ps --workers 15 --adversaries 2 --code repetition --attack constant \\
             --model lstsq --rounds 100 --secret-file ps.secret --run-dir runs/demo
    draco-worker --ps 127.0.0.1:7000 --id 0 --count 15 --token-file tokens.txt

What this module does (the round logic itself is ``rounds.RoundEngine``):

1. Listen (TCP_NODELAY, optional TLS). Each connection is a ``Peer``: an
   ``asyncio.BufferedProtocol`` feeding a sans-IO ``Connection`` through ``get_buffer`` /
   ``buffer_updated``, so a payload's bytes land directly in its final numpy array.
2. Handshake under ``--handshake-timeout``: Hello -> Challenge(fresh nonce) -> Auth(mac) ->
   constant-time check against the cluster secret -> Welcome(config). Before that no tensor
   byte is accepted; after it the frame limits are exactly one payload of the run's code.
   One seat per worker id: an authenticated second connection for an occupied seat gets
   ``Error("seat_taken")``. Who may hold a pre-authentication slot is decided by the sans-IO
   policy ``draco.net.admission`` (per-source and global limits, eviction of the oldest idle
   connection, a reserved slot per worker id, throttled authentication failures). With TLS
   the connection is registered at accept and upgraded with ``loop.start_tls`` afterwards, so
   TLS handshakes in progress count in the same limits and run under the same deadline.
3. Rounds: broadcast RoundStart(round, attempt) to every seated worker, offer each Gradient
   to the round's collector, close the attempt as soon as ``code.ready`` says so, when every
   worker is accounted for, or at ``--round-timeout``; decode + update in a helper thread
   (the loop keeps serving handshakes meanwhile). ``code.ready`` runs inline only for the
   codes whose check is a byte comparison (repetition, none); the cyclic code's O(n d) check
   runs in the helper thread, at most one at a time, re-run once for the payloads that
   arrived meanwhile, and only after a silence without arrivals (``READY_CHECK_FRACTION``).
   A worker that joins or reconnects mid-round is welcomed and joins at
   the next attempt. A peer whose socket still holds the previous round's parameters (not
   reading) is skipped for the attempt rather than buffered without bound. A protocol
   violation (malformed frame, a wrong-shape payload, too many messages, ...) is an erasure
   for the attempt and closes that connection; the server goes on.
   Digest-first vote (``--vote digest``, docs/protocol.md section 6): the RoundStart carries
   a fresh key, workers answer with keyed digests, and as soon as a group has s+1 equal
   digests one member of that majority is asked for its payload (``_fetch_group``: hashed in
   the helper thread, next member on a mismatch, ``--payload-timeout`` or a disconnect);
   the attempt closes once every group's payload is verified or given up.
   A failed attempt is retried under the next attempt number after a pause that doubles
   (``RETRY_BACKOFF_BASE`` .. ``RETRY_BACKOFF_CAP``) and ends early once every seat is
   taken again. Attempts made while workers were not connected do not count against
   ``--max-failed-rounds``; they are bounded by ``--rejoin-timeout`` seconds instead. One
   metrics record per round (with its attempt count); failed attempts are logged at most
   once per ``WARN_INTERVAL`` seconds.
4. Shutdown (end of run, SIGINT/SIGTERM, too many failed rounds): stop accepting, send Bye
   to every peer, wait up to ``--shutdown-grace`` seconds for them to go, abort the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import logging
import math
import os
import resource
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from draco.core.digests import payload_digest
from draco.errors import AuthError, DracoError, ProtocolError, SeatTakenError
from draco.net import auth
from draco.net import messages as m
from draco.net.admission import Admission, AdmissionLimits, RateLimitedLog
from draco.net.frames import ArrayPool, Limits
from draco.net.peer import Peer
from draco.net.protocol import Connection, Role
from draco.ps.collector import RoundCollector, Verdict
from draco.ps.config import PSConfig
from draco.ps.engine import RoundEngine

log = logging.getLogger("draco.ps")

__all__ = [
    "EXIT_COMPLETED",
    "EXIT_FAILED",
    "ParameterServer",
    "RunHooks",
    "RunOutcome",
    "handshake_limits",
    "payload_limits",
    "retain_freed_memory",
]

EXIT_COMPLETED = 0
EXIT_FAILED = 1  # too many failed rounds, no worker joined, or an internal error

# Pause before the next attempt of a failed round, seconds: BASE after the first failure,
# doubling up to CAP. Why: a failed attempt costs little, so without a pause a round that
# cannot decode (workers gone) retries thousands of times a second and floods the logs.
RETRY_BACKOFF_BASE = 0.25
RETRY_BACKOFF_CAP = 4.0
# At most one warning about a round's failed attempts per this many seconds.
WARN_INTERVAL = 5.0
# A successful attempt that waited longer than this fraction of --round-timeout is warned
# about (rate-limited): the deadline has little margin over the measured round time.
NEAR_TIMEOUT = 0.5
# Codes whose ``ready`` is a cheap byte comparison and may run on the event loop; any other
# code's check runs in the helper thread (the cyclic one projects every payload: O(n d)).
INLINE_READY_CODES = frozenset({"repetition", "none"})
# CPython's GIL switch interval while serving, seconds. The helper thread (decode, cyclic
# ready) runs Python between its numpy calls; at the default 5 ms the event loop can wait that
# long for the GIL at each handoff. Measured (shared 2-core VM, load 7-9) with a thread
# running the cyclic ready() at n = 15, d = 1M, the main thread's largest sleep(1 ms) gap:
# 19-27 ms at 5 ms, 8-10 ms at 1 ms (idle: 4-11 ms); decode 13-16 ms vs 7-8 ms.
GIL_SWITCH_INTERVAL = 0.001
# Payload buffers the server keeps for reuse (``ArrayPool``), in payloads: one round's worth
# plus a few for stale answers to old attempts, which are dropped (and free again) at once.
# Beyond it payloads are plain new arrays; the pool never holds more than this.
PAYLOAD_POOL_SLACK = 2
# Silence (no new arrival) before an off-loop ``code.ready`` check starts: the larger of
# READY_CHECK_DELAY seconds and READY_CHECK_FRACTION of the time since the attempt's
# broadcast. Why: the cyclic check projects every payload received (O(n d): 50-80 ms of PS
# CPU at n = 45, d = 1M under load), and starting one on each of the last s arrivals cost
# 0.16-0.29 s of PS CPU per round (ready_cpu_seconds, 45-worker run under load ~10) in rounds
# where every payload came and the round closed as complete, without needing any check. With
# 45 workers computing in two processes the last arrivals came ~0.2 s apart, so a fixed
# 50 ms still ran them all; a silence of a tenth of the round so far means "a straggler is
# late". The price: an early close on a real straggler comes that much later (<= 10% of the
# round's time), still long before --round-timeout.
READY_CHECK_DELAY = 0.05
READY_CHECK_FRACTION = 0.1
# Erasure reason of a worker that held no seat when the attempt was broadcast (with the ones
# lost during it, such a failed attempt is waited out under --rejoin-timeout, not counted).
_ABSENT = "not connected"


def retain_freed_memory(max_chunk: int = 32 * 1024 * 1024, keep: int = 1024**3) -> bool:
    """Ask glibc to keep freed multi-MB buffers mapped instead of returning them to the OS.

    Why: a multi-MB allocation that comes from a fresh ``mmap`` is paid again in page faults
    and kernel zeroing on first touch. With ``M_MMAP_THRESHOLD`` raised to ``max_chunk`` such
    arrays come from the heap, and with ``M_TRIM_THRESHOLD`` at ``keep`` the memory freed
    after a round is reused by the next one without faulting. Received payloads no longer
    depend on it (they land in the server's ``ArrayPool``); it still applies to every other
    large array of a round (the decode's and the update's temporaries, the parameters).
    Process-wide; a no-op (returns False) off Linux/glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, int(max_chunk))) and bool(
        mallopt(m_trim_threshold, int(keep))
    )


def _thread_usage() -> resource.struct_rusage | None:
    """This thread's resource usage (user/system CPU, faults); None where not supported."""
    who = getattr(resource, "RUSAGE_THREAD", None)  # Linux
    return resource.getrusage(who) if who is not None else None


def _timed_ready(code: Any, snapshot: Any) -> tuple[bool, float]:
    """``code.ready(snapshot)`` and the CPU seconds it took in this (helper) thread."""
    c0 = time.thread_time()
    ok = bool(code.ready(snapshot))
    return ok, time.thread_time() - c0


def handshake_limits(max_header_bytes: int) -> Limits:
    """Frame limits before authentication: small headers, no tensors at all."""
    return Limits(max_header_bytes=max_header_bytes, max_tensor_bytes=0, max_tensors=0)


def payload_limits(max_header_bytes: int, dim: int, payload_dtype: np.dtype) -> Limits:
    """Frame limits after authentication: exactly one (dim,) payload of the code's dtype."""
    return Limits(
        max_header_bytes=max_header_bytes,
        max_tensor_bytes=int(dim) * np.dtype(payload_dtype).itemsize,
        max_tensors=1,
        max_ndim=1,
    )


# ----------------------------------------------------------------------------- the server


class RunHooks(Protocol):
    """Called by the server between rounds (metrics, evaluation, checkpoints, progress)."""

    def round_done(self, record: dict[str, Any], engine: RoundEngine) -> None: ...


@dataclass(frozen=True)
class RunOutcome:
    """How ``serve`` ended: ``exit_code`` 0 only for a completed run."""

    exit_code: int
    reason: str

    @property
    def completed(self) -> bool:
        return self.exit_code == EXIT_COMPLETED


class ParameterServer:
    """Serve one run: seats, handshakes, rounds (see module docstring).

    Parameters
    ----------
    config : PSConfig
        host, port, timeouts, limits, ready file, seed, ...
    task_spec : dict
        The task spec every worker rebuilds (``Task.spec()``).
    code : Code
        The run's code (``make_code``); its ``options`` go to the workers.
    engine : RoundEngine
        The round logic, already restored from a checkpoint if resuming.
    secret : bytes
        The cluster secret (tokens derive from it).
    hooks : RunHooks, optional
        Per-round callback (``cli/ps.py`` writes metrics, checkpoints and progress).
    ssl_context : ssl.SSLContext, optional
        TLS for the listener.
    """

    def __init__(
        self,
        config: PSConfig,
        *,
        task_spec: dict[str, Any],
        code: Any,
        engine: RoundEngine,
        secret: bytes,
        hooks: RunHooks | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.task_spec = task_spec
        self.code = code
        self.engine = engine
        self.secret = secret
        self.hooks = hooks
        self.ssl_context = ssl_context
        self.n_workers = int(code.n_workers)
        self.payload_dtype = np.dtype(code.payload_dtype)
        self._handshake_limits = handshake_limits(config.limits.max_handshake_header_bytes)
        self._payload_limits = payload_limits(
            config.limits.max_header_bytes, engine.dim, self.payload_dtype
        )
        # Received payloads land in the memory of the previous round's (see ArrayPool).
        self.payload_pool = ArrayPool(
            (self.n_workers + PAYLOAD_POOL_SLACK) * self._payload_limits.max_tensor_bytes
        )
        self.seats: dict[int, Peer] = {}
        self.peers: set[Peer] = set()
        self.address: tuple[str, int] | None = None
        self.refused = 0  # connections refused or dropped for a violation (metrics / tests)
        lim = config.limits
        self.admission = Admission(
            AdmissionLimits(
                max_pending=lim.max_pending_handshakes,
                max_pending_per_source=lim.max_pending_per_source,
                auth_failure_burst=lim.auth_failure_burst,
                auth_failure_rate=lim.auth_failure_rate,
            ),
            self.n_workers,
        )
        self._admission_log = RateLimitedLog(log, interval=5.0)
        self.sets_nodelay = True  # Peer: TCP_NODELAY only once seated (see Peer.set_nodelay)
        self._listener: asyncio.base_events.Server | None = None
        self._round: RoundCollector | None = None
        self._wake: asyncio.Event | None = None
        self._stop_reason: str | None = None
        self._stop_code = EXIT_FAILED
        self._accepting = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="draco-decode"
        )
        self._inline_ready = getattr(code, "name", None) in INLINE_READY_CODES
        self._ready_task: asyncio.Future[None] | None = None
        self._ready_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0  # loop.time() of the current attempt's broadcast
        self._ready_dirty = False
        self.ready_checks = 0  # code.ready calls made off the loop (tests / metrics)
        self._ready_cpu = 0.0  # their thread CPU seconds in the current attempt
        # (round, attempt) -> perf_counter at broadcast, for the current round's attempts
        # that hit the deadline: a late answer to one of them measures the real round time.
        self._timed_out: dict[tuple[int, int], float] = {}
        self._late_answer_seconds = 0.0
        self._absent_in_attempt: set[int] = set()
        # Digest-first vote: the attempt whose payloads are being fetched, and per asked
        # worker the future its Payload (None: it disconnected) resolves.
        self._fetching: RoundCollector | None = None
        self._pending_fetch: dict[int, asyncio.Future[np.ndarray | None]] = {}
        self._fetch_tasks: dict[int, asyncio.Future[None]] = {}  # group -> its fetch
        self._fetch_hosts: dict[int, str] = {}  # worker -> host, at the attempt's broadcast
        self._last_warning = -math.inf
        self._last_time_warning = -math.inf
        self._suppressed_warnings = 0

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) and writes the ready file if configured."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        cfg = self.config
        retain_freed_memory()
        if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
            sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        try:
            # TLS is not given to create_server: Peer upgrades each connection with start_tls
            # once admission let it in, so TLS handshakes are bounded like plain sockets.
            self._listener = await loop.create_server(
                lambda: Peer(
                    self,
                    Connection(
                        Role.SERVER,
                        self._handshake_limits,
                        self.payload_pool,
                        max_outstanding_requests=cfg.limits.max_outstanding_requests,
                    ),
                    tls=self.ssl_context,
                    tls_timeout=cfg.handshake_timeout,
                ),
                cfg.host,
                cfg.port,
                reuse_address=True,
                backlog=max(128, 2 * self.n_workers),
            )
        except OSError as exc:
            raise DracoError(
                f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc} "
                "(is another draco-ps running? pick another --port, or --port 0)"
            ) from exc
        sock = self._listener.sockets[0]
        host, port = sock.getsockname()[:2]
        self.address = (host, port)
        self._accepting = True
        if cfg.ready_file is not None:
            from draco.ps.rundir import atomic_write_json

            atomic_write_json(cfg.ready_file, {"host": host, "port": port, "pid": os.getpid()})
        log.info("listening on %s:%d", host, port)
        return host, port

    def request_stop(self, reason: str, exit_code: int = EXIT_FAILED) -> None:
        """Stop after the current step (signal handlers call this); first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_code = exit_code
        for fut in self._pending_fetch.values():
            if not fut.done():
                fut.set_result(None)  # a payload fetch in progress ends now
        if self._wake is not None:
            self._wake.set()

    async def serve(self) -> RunOutcome:
        """Run the whole job: wait for workers, rounds until done, then shut down."""
        if self._listener is None:
            await self.start()
        try:
            outcome = await self._run()
        except Exception as exc:  # never leave workers hanging: log, then shut down
            log.exception("internal error")
            outcome = RunOutcome(EXIT_FAILED, f"internal error: {exc!r}")
        finally:
            await self.shutdown("run complete" if self.engine.done else "shutdown")
        return outcome

    async def _run(self) -> RunOutcome:
        await self._wait_for_workers()
        if self._stop_reason is not None:
            return RunOutcome(self._stop_code, self._stop_reason)
        if not self.seats:
            return RunOutcome(
                EXIT_FAILED,
                f"no worker joined within --join-timeout {self.config.join_timeout:g} s "
                f"(are the draco-worker processes pointed at "
                f"{self.address[0] if self.address else '?'}:"
                f"{self.address[1] if self.address else '?'} with valid tokens?)",
            )
        while not self.engine.finished and self._stop_reason is None:
            await self._run_round()
        if self._stop_reason is not None:
            return RunOutcome(self._stop_code, self._stop_reason)
        if self.engine.stopped:
            return RunOutcome(EXIT_FAILED, self._stopped_reason())
        return RunOutcome(EXIT_COMPLETED, f"completed {self.engine.rounds} rounds")

    async def _wait_for_workers(self) -> None:
        """Until every seat is taken, the join timeout, or a stop request."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.join_timeout
        while len(self.seats) < self.n_workers and self._stop_reason is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
        if len(self.seats) < self.n_workers:
            missing = sorted(set(range(self.n_workers)) - set(self.seats))
            log.warning("starting without workers %s (join timeout)", missing)

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
            result, absent, silent = attempt
            if result.ok:
                break
            last_error = result.error
            now = time.perf_counter()
            self._warn_failed(result, absent, silent)
            if absent or silent:
                absent_since = now if absent_since is None else absent_since
                if now - absent_since > self.config.rejoin_timeout:
                    self.request_stop(
                        f"round {result.record['round']} could not be decoded for "
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
        record = result.record
        self._check_round_time(record)
        record["wall_seconds"] = time.perf_counter() - t_round
        if record["attempts"] > 1 and last_error:
            record["retry_error"] = last_error  # the last failed attempt's, for the record
        if self.hooks is not None:
            self.hooks.round_done(record, engine)

    def _check_round_time(self, record: dict[str, Any]) -> None:
        """Warn (rate-limited) when an attempt's measured wait nears ``--round-timeout``."""
        wait, limit = float(record["wait_seconds"]), self.config.round_timeout
        now = time.monotonic()
        if record["failed"] or wait <= NEAR_TIMEOUT * limit:
            return
        if now - self._last_time_warning < WARN_INTERVAL:
            return
        self._last_time_warning = now
        log.warning(
            "round %d took %.3g s to collect, more than %d%% of --round-timeout %g s: a "
            "slower round will miss the deadline and be retried; consider raising it",
            record["round"],
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

    def _warn_failed(self, result: Any, absent: set[int], silent: set[int]) -> None:
        """A failed attempt: a warning at the round's first failure, then rate-limited."""
        now = time.monotonic()
        first = result.record["attempts"] == 1
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
            result.record["round"],
            result.record["attempts"] - 1,
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
        deadline = loop.time() + delay
        waiting_for_seats = len(self.seats) < self.n_workers
        while self._stop_reason is None:
            if waiting_for_seats and len(self.seats) >= self.n_workers:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _run_attempt(self) -> tuple[Any, set[int], set[int]] | None:
        """One attempt: broadcast, collect until close, decode + update off the loop.

        Returns (RoundRecord, absent, silent), or None when a stop was requested meanwhile.
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
        params = engine.params  # never mutated: the engine makes a new array per update
        key = (rnd.index, rnd.attempt)
        self._round = rnd
        self._absent_in_attempt = set()
        self._wake.clear()
        if rnd.digest_mode:
            # Payload requests may start during the digest phase (``_fetch_early``).
            self._fetching = rnd
            self._fetch_tasks = {}
            self._fetch_hosts = {j: _source(p) for j, p in self.seats.items()}
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
        silent = set()
        for j, peer in self.seats.items():
            if rnd.delivered(j) or j in absent:
                continue
            stuck = rnd.erased.get(j, "").startswith("not reading")
            if stuck or (j not in rnd.erased and peer.conn.last_answered < (rnd.index, 0)):
                silent.add(j)
        counted = not absent and not silent
        result = await loop.run_in_executor(
            self._executor,
            lambda: engine.finish(rnd, wait_seconds=wait, count_failure=counted),
        )
        result.record["wall_seconds"] = time.perf_counter() - t0
        rec = result.record
        rec["fetch_seconds"] = fetch_seconds
        rec["loop_cpu_seconds"] = loop_cpu
        if usage0 is not None and usage1 is not None:
            # Where the loop's time went: the kernel (socket copies, TCP, page faults) vs.
            # this process's own code (framing, checks, bookkeeping).
            rec["loop_user_cpu_seconds"] = usage1.ru_utime - usage0.ru_utime
            rec["loop_sys_cpu_seconds"] = usage1.ru_stime - usage0.ru_stime
            rec["loop_minor_faults"] = usage1.ru_minflt - usage0.ru_minflt
        # The cyclic code's readiness checks ran in the helper thread during the attempt.
        rec["ready_cpu_seconds"] = self._ready_cpu
        rec["ps_cpu_seconds"] = rec.get("ps_cpu_seconds", 0.0) + loop_cpu + self._ready_cpu
        return result, absent, silent

    async def _fetch(self, rnd: RoundCollector) -> None:
        """Digest-first vote, phase 2: one verified payload per group, groups in parallel.

        Skipped when a group has no majority digest (the attempt fails at decode anyway and
        fetching would only cost bandwidth).
        """
        try:
            rnd.plan_fetch(self._fetch_hosts)
            groups = rnd.fetch_groups
            if len(groups) < len(getattr(self.code, "groups", ())):
                return
            for g in groups:
                if g not in self._fetch_tasks:
                    self._fetch_tasks[g] = asyncio.ensure_future(self._fetch_group(rnd, g))
            await asyncio.gather(*self._fetch_tasks.values())
        finally:
            self._end_fetch()

    def _end_fetch(self) -> None:
        """The attempt's fetch is over (done, given up, or stopping): cancel what is left."""
        self._fetching = None
        for task in self._fetch_tasks.values():
            task.cancel()
        self._fetch_tasks = {}
        for fut in self._pending_fetch.values():
            fut.cancel()
        self._pending_fetch.clear()

    def _fetch_early(self, rnd: RoundCollector, j: int) -> None:
        """Worker ``j``'s digest arrived: if its group is now decided, ask for its payload at
        once, while the other groups' digests are still coming in."""
        g = rnd.group_of(j)
        if g in self._fetch_tasks or not rnd.group_decided(g):
            return
        rnd.plan_group(g, self._fetch_hosts)
        self._fetch_tasks[g] = asyncio.ensure_future(self._fetch_group(rnd, g))

    async def _fetch_group(self, rnd: RoundCollector, g: int) -> None:
        """Ask the members of group ``g``'s majority in turn until one payload verifies.

        Next member on a timeout (``--payload-timeout``), a disconnect, or a payload that does
        not match the member's own digest (that member is located as a liar); at most
        ``--max-payload-requests`` requests (``RoundCollector.next_candidate``).
        """
        loop = asyncio.get_running_loop()
        cfg = rnd.digest_config
        key = rnd.digest_key
        assert key is not None
        while self._stop_reason is None:
            j = rnd.next_candidate(g)
            if j is None:
                return
            peer = self.seats.get(j)
            if (
                peer is None
                or peer.closed
                or peer.conn.last_round_start != (rnd.index, rnd.attempt)
            ):
                rnd.give_up(j, "not connected when its payload was needed")
                continue
            fut: asyncio.Future[np.ndarray | None] = loop.create_future()
            self._pending_fetch[j] = fut
            rnd.requested(
                j, g, peer.send(m.PayloadRequest(round_index=rnd.index, attempt=rnd.attempt))
            )
            try:
                payload = await asyncio.wait_for(fut, cfg.payload_timeout)
            except asyncio.TimeoutError:
                rnd.give_up(j, f"no payload within --payload-timeout {cfg.payload_timeout:g} s")
                log.info("round %d: worker %d did not send its payload in time", rnd.index, j)
                continue
            finally:
                self._pending_fetch.pop(j, None)
            if payload is None:
                rnd.give_up(j, "disconnected before sending its payload")
                continue
            # Hashing a 45 MB payload takes ~55 ms: off the event loop (hashlib drops the GIL).
            digest = await loop.run_in_executor(
                self._executor, payload_digest, payload, key, cfg.digest_bytes
            )
            if rnd.verify(j, payload, digest):
                return
            log.warning(
                "round %d: worker %d sent a payload that does not match its own digest: "
                "located as a liar",
                rnd.index,
                j,
            )

    def _on_payload(self, peer: Peer, msg: m.Payload, wire_bytes: int) -> None:
        """A requested payload (the Connection already refused unsolicited/duplicate ones)."""
        j = peer.worker_id
        assert j is not None
        rnd = self._fetching
        if rnd is None:
            return  # its attempt is over: a late answer, legal and useless
        offer = rnd.check_payload(j, msg.round_index, msg.attempt, msg.payload, wire_bytes)
        if offer.verdict is Verdict.VIOLATION:
            self.peer_violation(peer, ProtocolError(offer.reason))
            return
        fut = self._pending_fetch.get(j)
        if offer.verdict is Verdict.ACCEPTED and fut is not None and not fut.done():
            fut.set_result(msg.payload)

    async def shutdown(self, reason: str) -> None:
        """Stop accepting, Bye to every peer, wait up to the grace period, abort the rest."""
        self._accepting = False
        if self._listener is not None:
            self._listener.close()
        peers = list(self.peers)
        for peer in peers:
            peer.close(m.Bye(reason=reason))
        waiting = [asyncio.ensure_future(p.lost.wait()) for p in peers if not p.lost.is_set()]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=self.config.shutdown_grace)
            for fut in pending:
                fut.cancel()
        for peer in list(self.peers):
            peer.abort()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- PeerHandler ------------------------------------------------------------------------

    def peer_connected(self, peer: Peer) -> None:
        if not self._accepting:
            peer.abort()
            return
        loop = asyncio.get_running_loop()
        decision = self.admission.open(peer, _source(peer), loop.time())
        for victim in decision.evict:
            # Bounded: the oldest idle pre-auth socket makes room (docs/protocol.md 4.1).
            self._admission_log(
                logging.WARNING,
                "evict",
                "pre-authentication slots full: evicted the oldest idle connection %s for %s",
                getattr(victim, "peername", victim),
                peer.peername,
            )
            abort = getattr(victim, "abort", None)
            if abort is not None:
                abort()
        if not decision.admit:
            self.refused += 1
            self._admission_log(
                logging.WARNING, "refuse", "refused %s: %s", peer.peername, decision.reason
            )
            peer.abort()
            return
        self.peers.add(peer)
        peer.handshake_timer = loop.call_later(
            self.config.handshake_timeout, self._handshake_expired, peer
        )

    def peer_tls_failed(self, peer: Peer, exc: BaseException) -> None:
        """The TLS upgrade of ``peer`` failed (not TLS, bad certificate, deadline, evicted)."""
        if peer.closed:
            return  # evicted or timed out: already counted
        hint = ""
        if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS_REASONS:
            hint = " (the client does not speak TLS: a worker without --tls-ca?)"
        self._admission_log(
            logging.INFO, "tls", "TLS handshake with %s failed: %s%s", peer.peername, exc, hint
        )

    def _handshake_expired(self, peer: Peer) -> None:
        peer.handshake_timer = None
        if peer.worker_id is None and not peer.closed:
            self._admission_log(logging.INFO, "timeout", "%r: handshake timed out", peer)
            self.refused += 1
            self.admission.counters["handshake_timeouts"] += 1
            if peer.tls_pending:
                peer.abort()  # still in the TLS handshake: nothing readable to say
                return
            peer.close(
                m.Error(
                    code=m.ErrorCode.TIMEOUT,
                    message=f"handshake not completed within {self.config.handshake_timeout:g} s",
                )
            )

    def peer_violation(self, peer: Peer, exc: ProtocolError) -> None:
        log.info("%r: protocol violation: %s", peer, exc)
        self.refused += 1
        self._erase_peer(peer, f"protocol violation: {exc}")
        peer.close(m.Error(code=m.error_code_for(exc), message=str(exc)[:1000]))

    def peer_lost(self, peer: Peer) -> None:
        self.peers.discard(peer)
        self.admission.release(peer)
        self._erase_peer(peer, "disconnected")

    def _erase_peer(self, peer: Peer, reason: str) -> None:
        j = peer.worker_id
        if j is not None and self.seats.get(j) is peer:
            del self.seats[j]
            fut = self._pending_fetch.get(j)
            if fut is not None and not fut.done():
                fut.set_result(None)  # its payload will not come: ask the next member
            # The digest vote's fetch phase is still the attempt (``_round`` is None then): a
            # member lost there makes a failed attempt one with workers missing, not counted.
            rnd = self._round or self._fetching
            if rnd is not None and peer.conn.last_round_start == (rnd.index, rnd.attempt):
                rnd.erase(j, reason)
                self._absent_in_attempt.add(j)
                self._maybe_close_round(rnd)

    def _maybe_close_round(self, rnd: RoundCollector) -> None:
        """Wake the round when it can close: complete, or ``code.ready`` (maybe off-loop)."""
        if self._round is not rnd or self._wake is None:
            return
        if rnd.complete or rnd.known_ready:
            self._wake.set()
            return
        if not rnd.received and not rnd.digests:
            return
        if self._inline_ready:
            if rnd.ready:
                self._wake.set()
            return
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_dirty = True  # re-checked with these payloads when the one running ends
            return
        # Not at once: after a silence without another arrival (see READY_CHECK_FRACTION).
        if self._ready_timer is not None:
            self._ready_timer.cancel()
        loop = asyncio.get_running_loop()
        silence = max(READY_CHECK_DELAY, READY_CHECK_FRACTION * (loop.time() - self._started_at))
        self._ready_timer = loop.call_later(silence, self._start_ready_check, rnd)

    def _start_ready_check(self, rnd: RoundCollector) -> None:
        self._ready_timer = None
        if self._round is not rnd or rnd.complete or rnd.known_ready:
            return  # the attempt closed, or closes without a check, meanwhile
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_dirty = True
            return
        self._ready_dirty = False
        self._ready_task = asyncio.ensure_future(self._check_ready(rnd))

    async def _check_ready(self, rnd: RoundCollector) -> None:
        """``code.ready`` in the helper thread on snapshots, until ready or nothing new came.

        Arrivals while a check runs only set ``_ready_dirty``; if the attempt changed
        meanwhile, the payloads of the new one get their own check when this one ends.
        """
        try:
            await self._check_ready_of(rnd)
        finally:
            current = self._round
            if current is not None and current is not rnd and self._ready_dirty:
                self._ready_task = None
                self._maybe_close_round(current)

    async def _check_ready_of(self, rnd: RoundCollector) -> None:
        loop = asyncio.get_running_loop()
        while self._round is rnd:
            self._ready_dirty = False
            snapshot = rnd.readiness_input()
            self.ready_checks += 1
            try:
                ok, cpu = await loop.run_in_executor(
                    self._executor, _timed_ready, self.code, snapshot
                )
                self._ready_cpu += cpu
            except Exception:  # a bug in a code must not kill the round: it closes at timeout
                log.exception("round %d: code.ready failed", rnd.index)
                return
            if self._round is not rnd:
                return
            if ok:
                rnd.mark_ready()
                if self._wake is not None:
                    self._wake.set()
                return
            if not self._ready_dirty:
                return

    def peer_message(self, peer: Peer, msg: m.Message, wire_bytes: int) -> None:
        if peer.worker_id is None:
            self._handshake_step(peer, msg)
            return
        if isinstance(msg, m.Bye):
            log.info("%r left: %s", peer, msg.reason)
            self._erase_peer(peer, f"left: {msg.reason}")
            peer.close()
            return
        if isinstance(msg, m.Error):
            # Warning: a worker refusing the run's task or code needs its operator's action.
            log.warning("%r sent an error: %s %s", peer, msg.code, msg.message)
            self._erase_peer(peer, f"error: {msg.code}")
            peer.close()
            return
        if isinstance(msg, m.Gradient | m.Digest):
            # An answer is always for a newer (round, attempt) than the last (the Connection
            # checked it) and opens a new count: a worker answering a backlog after a pause
            # sends many in a row, each a legitimate (late) answer.
            peer.messages_in_round = 0
        peer.messages_in_round += 1
        if peer.messages_in_round > self.config.limits.max_messages_per_round:
            self.peer_violation(
                peer,
                ProtocolError(
                    f"more than {self.config.limits.max_messages_per_round} messages in one round"
                ),
            )
            return
        if isinstance(msg, m.Gradient | m.Digest):
            self._on_answer(peer, msg, wire_bytes)
            return
        if isinstance(msg, m.Payload):
            self._on_payload(peer, msg, wire_bytes)
            return
        # The Connection's state table admits nothing else from a READY client.
        self.peer_violation(peer, ProtocolError(f"unexpected {type(msg).__name__}"))

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

    # -- handshake

    def _handshake_step(self, peer: Peer, msg: m.Message) -> None:
        """Hello -> Challenge; Auth -> verify -> Welcome or Error (see module docstring)."""
        if isinstance(msg, m.Hello):
            holder = self.seats.get(msg.worker_id)
            seat_free = holder is None or holder.closed
            loop = asyncio.get_running_loop()
            self.admission.hello(peer, msg.worker_id, seat_free, loop.time())
            peer.send(m.Challenge(nonce=auth.new_nonce()))
            return
        if isinstance(msg, m.Auth):
            loop = asyncio.get_running_loop()
            delay = self.admission.auth_delay(_source(peer), loop.time())
            if delay > 0:
                # Throttled source: this answer waits; the handshake deadline still runs.
                self._admission_log(
                    logging.WARNING,
                    "throttle",
                    "throttling authentication from %s (too many failures): %.2f s delay",
                    _source(peer),
                    delay,
                )
                loop.call_later(delay, self._verify_auth, peer, msg)
                return
            self._verify_auth(peer, msg)
            return
        # Bye / Error during the handshake: the peer gives up.
        peer.close()

    def _verify_auth(self, peer: Peer, msg: m.Auth) -> None:
        """Check the Auth's MAC and the seat: Welcome, or Error and close."""
        if peer.closed:
            return  # timed out or evicted while its verification was throttled
        try:
            j = self._authenticate(peer, msg)
        except AuthError as exc:
            self.refused += 1
            code = m.error_code_for(exc)
            if code is m.ErrorCode.AUTH_FAILED:
                loop = asyncio.get_running_loop()
                self.admission.auth_failed(_source(peer), loop.time())
            self._admission_log(logging.INFO, code, "%r refused: %s", peer, exc)
            self.admission.release(peer)
            peer.close(m.Error(code=code, message=str(exc)))
            return
        if peer.handshake_timer is not None:
            peer.handshake_timer.cancel()
            peer.handshake_timer = None
        if self._stop_reason is not None or self.engine.finished:
            peer.close(m.Bye(reason="run complete" if self.engine.done else "shutdown"))
            return
        peer.worker_id = j
        self.seats[j] = peer
        self.admission.release(peer)  # authenticated: no longer a pre-auth slot
        peer.set_nodelay()
        peer.conn.limits = self._payload_limits  # before Welcome: applies from READY on
        peer.send(m.Welcome(config=self.welcome_config(j)))
        log.info("worker %d joined from %s", j, peer.peername)
        if self._wake is not None and self._round is None:
            self._wake.set()  # the join phase counts seats

    def _authenticate(self, peer: Peer, msg: m.Auth) -> int:
        j, nonce = peer.conn.worker_id, peer.conn.nonce
        if j is None or nonce is None:
            raise AuthError("Auth before Hello/Challenge")
        # Verify before looking at the seat so an unauthenticated peer learns nothing.
        if not (0 <= j < self.n_workers) or not auth.verify_handshake(
            self.secret, j, nonce, msg.mac
        ):
            raise AuthError(
                f"credential refused for worker id {j} (this run has ids 0..{self.n_workers - 1};"
                " is the token file from this run's secret?)"
            )
        holder = self.seats.get(j)
        if holder is not None and not holder.closed:
            raise SeatTakenError(f"seat of worker {j} is taken by another connection")
        return j

    def welcome_config(self, j: int) -> dict[str, Any]:
        """Welcome.config for worker ``j`` (keys per docs/architecture.md)."""
        code = self.code
        return {
            "worker_id": j,
            "n_workers": self.n_workers,
            "n_adversaries": int(code.n_adversaries),
            "code": code.name,
            "code_options": dict(getattr(code, "options", {}) or {}),
            "partitions": [int(k) for k in code.partitions_of(j)],
            "payload_dtype": self.payload_dtype.str,
            "dim": self.engine.dim,
            "task": self.task_spec,
            "seed": self.config.seed,
            "round_timeout": self.config.round_timeout,
            "attack_options": dict(getattr(self.config, "attack_options", {}) or {}),
            "vote": self.engine.vote,
            "digest_bytes": self.engine.digest_config.digest_bytes,
        }


# OpenSSL's reasons when the bytes received are not a TLS record (a plain-text client).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
)


def _source(peer: Peer) -> str:
    """The address a peer's limits are counted under (its IP; ``"?"`` if unknown)."""
    name = peer.peername
    if isinstance(name, tuple) and name:
        return str(name[0])
    return "?" if not name else str(name)
