"""The asyncio parameter server: a thin shell of sockets and timers over ``draco.net.rounds``.

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
   ``Error("seat_taken")``. At most ``max_pending_handshakes`` handshakes at once.
3. Rounds: broadcast RoundStart to every seated worker, offer each Gradient to the round's
   collector, close the round as soon as ``code.ready`` says so, when every worker is
   accounted for, or at ``--round-timeout``; decode + update in a helper thread (the loop
   keeps serving handshakes meanwhile). A worker that joins or reconnects mid-round is
   welcomed and joins at the next round. A peer whose socket still holds the previous
   round's parameters (not reading) is skipped for the round rather than buffered without
   bound. A protocol violation (malformed frame, a wrong-shape payload, too many messages in
   one round, ...) is an erasure for the round and closes that connection; the server goes on.
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
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from draco.config import PSConfig
from draco.errors import AuthError, DracoError, ProtocolError, VersionMismatchError
from draco.net import auth
from draco.net import messages as m
from draco.net.frames import Limits
from draco.net.protocol import Closed, Connection, NeedData, Role, State
from draco.net.rounds import RoundCollector, RoundEngine, Verdict

log = logging.getLogger("draco.ps")

__all__ = [
    "EXIT_COMPLETED",
    "EXIT_FAILED",
    "ParameterServer",
    "Peer",
    "PeerHandler",
    "RunHooks",
    "RunOutcome",
    "handshake_limits",
    "payload_limits",
    "retain_freed_memory",
]

EXIT_COMPLETED = 0
EXIT_FAILED = 1  # too many failed rounds, no worker joined, or an internal error


def retain_freed_memory(max_chunk: int = 32 * 1024 * 1024, keep: int = 1024**3) -> bool:
    """Ask glibc to keep freed payload buffers mapped instead of returning them to the OS.

    Why: every Gradient lands in a fresh numpy array (the frame decoder allocates it), and a
    multi-MB allocation that comes from a fresh ``mmap`` is paid again in page faults and
    kernel zeroing on first touch -- measured here, that halves the ingest throughput. With
    ``M_MMAP_THRESHOLD`` raised to ``max_chunk`` such arrays come from the heap, and with
    ``M_TRIM_THRESHOLD`` at ``keep`` the memory freed after a round is reused by the next one
    without faulting. Process-wide; a no-op (returns False) off Linux/glibc.
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


# ----------------------------------------------------------------------------- one peer


class PeerHandler(Protocol):
    """What a ``Peer`` reports to (the ``ParameterServer``, or the benchmark's sink)."""

    def peer_connected(self, peer: Peer) -> None: ...

    def peer_message(self, peer: Peer, msg: m.Message, wire_bytes: int) -> None: ...

    def peer_violation(self, peer: Peer, exc: ProtocolError) -> None: ...

    def peer_lost(self, peer: Peer) -> None: ...


class Peer(asyncio.BufferedProtocol):
    """One connection: bytes in through the sans-IO ``Connection``, messages to a handler.

    Attributes
    ----------
    conn : Connection
        The protocol state (server role).
    worker_id : int or None
        The authenticated worker id (None until the handshake succeeded).
    last_round_sent : int
        Newest round whose RoundStart this connection was sent (-1: none yet).
    last_round_answered : int
        Newest round this connection sent a payload for (-1: none yet).
    messages_in_round : int
        Messages received since the last RoundStart (bounded by the server).
    """

    def __init__(self, handler: PeerHandler, conn: Connection) -> None:
        self.handler = handler
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.peername: Any = None
        self.worker_id: int | None = None
        self.last_round_sent = -1
        self.last_round_answered = -1
        self.messages_in_round = 0
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.write_paused = False
        self.lost = asyncio.Event()
        self._mark = 0  # conn.bytes_received at the previous message

    def __repr__(self) -> str:
        who = f"worker {self.worker_id}" if self.worker_id is not None else "unauthenticated"
        return f"<Peer {who} {self.peername}>"

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.peername = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Control frames (RoundStart headers, Bye) must not wait for Nagle's timer.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.handler.peer_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.buffer_updated(nbytes)
        self._pump()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._pump()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.write_paused = False
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.lost.set()
        self.handler.peer_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    # -- helpers

    def _pump(self) -> None:
        """Hand every complete message to the handler."""
        while not self.closed:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                self.handler.peer_violation(self, exc)
                return
            if isinstance(event, NeedData):
                return
            if isinstance(event, Closed):
                self.close()
                return
            assert not isinstance(event, NeedData)
            received = self.conn.bytes_received
            wire, self._mark = received - self._mark, received
            self.handler.peer_message(self, event, wire)

    def send(self, msg: m.Message) -> int:
        """Queue ``msg`` on the transport; returns the bytes queued (0 if closed)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return 0
        if self.conn.state in (State.CLOSED,):
            return 0
        try:
            chunks = self.conn.send(msg)
        except ProtocolError:
            return 0
        self.transport.writelines(chunks)
        return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)

    def close(self, last: m.Bye | m.Error | None = None) -> None:
        """Send ``last`` (if any), flush and close."""
        if last is not None:
            self.send(last)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


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
        self.seats: dict[int, Peer] = {}
        self.peers: set[Peer] = set()
        self.address: tuple[str, int] | None = None
        self.refused = 0  # connections refused or dropped for a violation (metrics / tests)
        self._listener: asyncio.base_events.Server | None = None
        self._round: RoundCollector | None = None
        self._wake: asyncio.Event | None = None
        self._stop_reason: str | None = None
        self._stop_code = EXIT_FAILED
        self._accepting = False
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="draco-decode"
        )

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Listen; returns the bound (host, port) and writes the ready file if configured."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        cfg = self.config
        retain_freed_memory()
        try:
            self._listener = await loop.create_server(
                lambda: Peer(self, Connection(Role.SERVER, self._handshake_limits)),
                cfg.host,
                cfg.port,
                ssl=self.ssl_context,
                ssl_handshake_timeout=cfg.handshake_timeout if self.ssl_context else None,
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
            from draco.rundir import atomic_write_json

            atomic_write_json(cfg.ready_file, {"host": host, "port": port, "pid": os.getpid()})
        log.info("listening on %s:%d", host, port)
        return host, port

    def request_stop(self, reason: str, exit_code: int = EXIT_FAILED) -> None:
        """Stop after the current step (signal handlers call this); first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_code = exit_code
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
            return RunOutcome(
                EXIT_FAILED,
                f"{self.engine.totals.consecutive_failures} consecutive rounds failed "
                f"(--max-failed-rounds {self.engine.max_failed_rounds}); model not updated "
                "in those rounds",
            )
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

    async def _run_round(self) -> None:
        """One round: broadcast, collect until close, decode + update off the loop."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        engine = self.engine
        t0 = time.perf_counter()
        cpu0 = time.thread_time()  # the event loop's CPU time: broadcast + ingest
        rnd = engine.start_round()
        params = engine.params  # never mutated: the engine makes a new array per update
        self._round = rnd
        self._wake.clear()
        for j in range(self.n_workers):
            peer = self.seats.get(j)
            if peer is None or peer.closed:
                rnd.erase(j, "not connected")
                continue
            if peer.write_paused:
                # It has not read the previous round's parameters: do not queue more.
                rnd.erase(j, "not reading (send buffer full)")
                continue
            attack, seed = rnd.plan.instruction(j)
            peer.messages_in_round = 0
            peer.last_round_sent = rnd.index
            sent_at = time.perf_counter()
            rnd.sent(
                j,
                peer.send(
                    m.RoundStart(
                        round_index=rnd.index, params=params, attack=attack, attack_seed=seed
                    )
                ),
                at=sent_at,
            )
        if not rnd.should_close:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.round_timeout)
        self._round = None  # from here, payloads for this round are stale
        if self._stop_reason is not None:
            return  # shutting down: leave the round unfinished (the model stays as it was)
        wait = time.perf_counter() - t0
        loop_cpu = time.thread_time() - cpu0
        result = await loop.run_in_executor(
            self._executor, lambda: engine.finish(rnd, wait_seconds=wait)
        )
        result.record["wall_seconds"] = time.perf_counter() - t0
        result.record["loop_cpu_seconds"] = loop_cpu
        result.record["ps_cpu_seconds"] = result.record.get("ps_cpu_seconds", 0.0) + loop_cpu
        if not result.ok:
            log.warning(
                "round %d FAILED (%d/%d consecutive): %s; model not updated",
                rnd.index,
                engine.totals.consecutive_failures,
                engine.max_failed_rounds,
                result.error,
            )
        if self.hooks is not None:
            self.hooks.round_done(result.record, engine)

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
        pending = sum(1 for p in self.peers if p.worker_id is None)
        if not self._accepting or pending >= self.config.limits.max_pending_handshakes:
            # Bounded: unauthenticated peers cannot make us hold more than this many sockets.
            self.refused += 1
            peer.abort()
            return
        self.peers.add(peer)
        loop = asyncio.get_running_loop()
        peer.handshake_timer = loop.call_later(
            self.config.handshake_timeout, self._handshake_expired, peer
        )

    def _handshake_expired(self, peer: Peer) -> None:
        peer.handshake_timer = None
        if peer.worker_id is None and not peer.closed:
            log.info("%r: handshake timed out", peer)
            self.refused += 1
            peer.close(
                m.Error(
                    code="timeout",
                    message=f"handshake not completed within {self.config.handshake_timeout:g} s",
                )
            )

    def peer_violation(self, peer: Peer, exc: ProtocolError) -> None:
        log.info("%r: protocol violation: %s", peer, exc)
        self.refused += 1
        code = "version_mismatch" if isinstance(exc, VersionMismatchError) else "protocol_error"
        self._erase_peer(peer, f"protocol violation: {exc}")
        peer.close(m.Error(code=code, message=str(exc)[:1000]))

    def peer_lost(self, peer: Peer) -> None:
        self.peers.discard(peer)
        self._erase_peer(peer, "disconnected")

    def _erase_peer(self, peer: Peer, reason: str) -> None:
        j = peer.worker_id
        if j is not None and self.seats.get(j) is peer:
            del self.seats[j]
            rnd = self._round
            if rnd is not None and peer.last_round_sent == rnd.index:
                rnd.erase(j, reason)
                self._maybe_close_round(rnd)

    def _maybe_close_round(self, rnd: RoundCollector) -> None:
        if self._round is rnd and self._wake is not None and rnd.should_close:
            self._wake.set()

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
            log.info("%r sent an error: %s %s", peer, msg.code, msg.message)
            self._erase_peer(peer, f"error: {msg.code}")
            peer.close()
            return
        peer.messages_in_round += 1
        if peer.messages_in_round > self.config.limits.max_messages_per_round:
            self.peer_violation(
                peer,
                ProtocolError(
                    f"more than {self.config.limits.max_messages_per_round} messages in one round"
                ),
            )
            return
        if isinstance(msg, m.Gradient):
            self._on_gradient(peer, msg, wire_bytes)
            return
        # The Connection's state table admits nothing else from a READY client.
        self.peer_violation(peer, ProtocolError(f"unexpected {type(msg).__name__}"))

    def _on_gradient(self, peer: Peer, msg: m.Gradient, wire_bytes: int) -> None:
        j = peer.worker_id
        assert j is not None
        if msg.round_index > peer.last_round_sent:
            self.peer_violation(
                peer, ProtocolError(f"payload for round {msg.round_index}, never started for it")
            )
            return
        if msg.round_index == peer.last_round_answered:
            # Even when its round already closed: one payload per round and connection.
            self.peer_violation(peer, ProtocolError(f"second payload for round {msg.round_index}"))
            return
        peer.last_round_answered = max(peer.last_round_answered, msg.round_index)
        rnd = self._round
        if rnd is None or msg.round_index < rnd.index:
            return  # a straggler's payload for a closed round: useless, harmless
        offer = rnd.offer(
            j,
            msg.round_index,
            msg.payload,
            msg.compute_seconds,
            wire_bytes,
            received_at=time.perf_counter(),
        )
        if offer.verdict is Verdict.VIOLATION:
            self.peer_violation(peer, ProtocolError(offer.reason))
        elif offer.verdict is Verdict.ERASURE:
            log.info("round %d: worker %d erased: %s", rnd.index, j, offer.reason)
        self._maybe_close_round(rnd)

    # -- handshake

    def _handshake_step(self, peer: Peer, msg: m.Message) -> None:
        """Hello -> Challenge; Auth -> verify -> Welcome or Error (see module docstring)."""
        if isinstance(msg, m.Hello):
            peer.send(m.Challenge(nonce=auth.new_nonce()))
            return
        if isinstance(msg, m.Auth):
            try:
                j = self._authenticate(peer, msg)
            except AuthError as exc:
                self.refused += 1
                code = "seat_taken" if "seat" in str(exc) else "auth_failed"
                log.info("%r refused: %s", peer, exc)
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
            peer.conn.limits = self._payload_limits  # before Welcome: applies from READY on
            peer.send(m.Welcome(config=self.welcome_config(j)))
            log.info("worker %d joined from %s", j, peer.peername)
            if self._wake is not None and self._round is None:
                self._wake.set()  # the join phase counts seats
            return
        # Bye / Error during the handshake: the peer gives up.
        peer.close()

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
            raise AuthError(f"seat of worker {j} is taken by another connection")
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
        }


def run_with_loop(main: Callable[[], Any], loop_name: str) -> Any:
    """Run coroutine factory ``main`` on uvloop (default) or the stock asyncio loop.

    Falls back to asyncio with a warning if uvloop is not installed.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_name == "uvloop":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
            log.warning("uvloop is not installed; using the asyncio event loop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
