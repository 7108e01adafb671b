"""The parameter server's shared state and its small helpers (the shell's base class).

``ServerState`` holds everything the shell's parts read and write: the seats, the current
attempt, the timers of the early close and the digest fetch, the stop request. The parts
add behaviour on top of it, one job each, in this order (each may call the ones before):

- ``server_ready.EarlyClose``: when an attempt may close (``code.ready``, maybe off-loop);
- ``server_seats.Seats``: admission, handshake, seats, lost peers and violations;
- ``server_fetch.PayloadFetch``: the digest-first vote's payload requests;
- ``server_rounds.RoundDriver``: rounds and their attempts: broadcast, answers, retries;
- ``server.ParameterServer``: the life cycle (listen, serve, stop, shut down).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import logging
import math
import ssl
import sys
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from draco.core.codes import Code
from draco.net.admission import Admission, AdmissionLimits, RateLimitedLog
from draco.net.frames import ArrayPool, Limits
from draco.net.peer import Peer
from draco.ps.collector import RoundCollector
from draco.ps.config import PSConfig
from draco.ps.engine import RoundEngine
from draco.ps.record import RoundRecord

log = logging.getLogger("draco.ps")

EXIT_COMPLETED = 0
EXIT_FAILED = 1  # too many failed rounds, no worker joined, or an internal error
EXIT_DIVERGED = 3  # the model diverged (NaN/Inf): the run ended with a summary

# Codes whose ``ready`` is a cheap byte comparison and may run on the event loop; any other
# code's check runs in the helper thread (the cyclic one projects every payload: O(n d)).
INLINE_READY_CODES = frozenset({"repetition", "none"})
# Payload buffers the server keeps for reuse (``ArrayPool``), in payloads: one round's worth
# plus a few for stale answers to old attempts, which are dropped (and free again) at once.
# Beyond it payloads are plain new arrays; the pool never holds more than this.
PAYLOAD_POOL_SLACK = 2


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


def source_of(peer: Peer) -> str:
    """The address a peer's limits are counted under (its IP; ``"?"`` if unknown)."""
    name = peer.peername
    if isinstance(name, tuple) and name:
        return str(name[0])
    return "?" if not name else str(name)


class RunHooks(Protocol):
    """Called by the server between rounds (metrics, evaluation, checkpoints, progress)."""

    def round_done(self, record: RoundRecord, engine: RoundEngine) -> None: ...


class ServerState:
    """The state of one run's server (``ParameterServer`` documents the parameters)."""

    def __init__(
        self,
        config: PSConfig,
        *,
        task_spec: dict[str, Any],
        code: Code,
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

    async def _sleep_until(self, deadline: float, done: Callable[[], bool]) -> None:
        """Sleep until ``done()``, the loop time ``deadline`` or a stop request, waking at
        every ``_wake`` (a seat taken, an attempt that may close) to check."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while self._stop_reason is None and not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)
