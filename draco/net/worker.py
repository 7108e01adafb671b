"""The asyncio worker: K logical DRACO workers in one process, one connection each.

Each logical worker ``j`` (ids ``first_id .. first_id + count - 1``) runs this loop::

    1. connect to the PS with a deadline and jittered exponential backoff (TCP_NODELAY);
    2. handshake: Hello(version, j) -> Challenge(nonce) -> Auth(mac) -> Welcome(config);
    3. build the code ``make_code(config["code"], n, s, **config["code_options"])`` and the task
       ``make_task(config["task"])`` (one task per spec per process, shared);
    4. per RoundStart(t, w_t, attack, attack_seed, attempt):
           g   = task.partition_gradients(w_t, t, partitions)     # (r, d) float32
           y_j = code.encode(j, g)                                 # (d,) payload dtype
           y_j = attack.apply(y_j, ...)  if this worker lies this round
           send Gradient(t, y_j, compute_seconds, attempt)
       A RoundStart superseded by a newer (round, attempt) already received is skipped: after
       a pause the worker answers only the newest (the PS would ignore the others anyway).
       Digest-first vote (``RoundStart.digest_key`` non-empty): send instead
           Digest(t, attempt, BLAKE2b(y_j, key=digest_key), compute_seconds)
       and keep y_j; a PayloadRequest(t, attempt) is answered with Payload(t, attempt, y_j).
       Only the payloads of the last ``HELD_PAYLOADS`` attempts are kept (a request for an
       older one is not answered: the PS then asks another member).
    5. Bye -> done; a dropped connection -> back to 1 (rejoin at the next round).

Gradients are computed one at a time in ONE compute thread for the whole process (torch uses
one thread per process, and the event loop stays responsive for the other connections). The
logical workers of a process share partition gradients through a per-round cache: in the
repetition code every member of a group computes the same partitions, and the computation is
deterministic, so computing partition k once per (round, params) gives every holder the bit
identical gradient it would have computed itself. ``compute_seconds`` still reports what the
worker's own partitions cost, cached or not, so the metrics keep the code's real load.

Errors that retrying cannot fix are final (no endless retry): a refused credential
(``AuthError``), another protocol version (``VersionMismatchError``), a bad configuration
(``ConfigError``: also TLS on one side only), and no parameter server reachable before the
connect deadline. A parameter server that is reachable but does not welcome us (its
pre-authentication slots are full, a handshake timed out, our seat is not yet freed) is
retried with jittered exponential backoff until ``join_timeout`` has passed without a
Welcome. One logical worker's final error never stops the others of its process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from draco.core.attacks import make_attack
from draco.core.codes import make_code
from draco.core.decoding import bitwise_equal
from draco.core.digests import DEFAULT_DIGEST_BYTES, check_digest_bytes, payload_digest
from draco.errors import (
    AuthError,
    ConfigError,
    DracoError,
    ProtocolError,
    RemoteProtocolError,
    SeatTakenError,
    VersionMismatchError,
)
from draco.net import messages as m
from draco.net.auth import handshake_mac
from draco.net.frames import PROTOCOL_VERSION, Limits
from draco.net.protocol import (
    MAX_OUTSTANDING_REQUESTS,
    Connection,
    Role,
    State,
    check_outstanding_requests,
)
from draco.net.stream import ConnectionProtocol
from draco.tasks.contract import Task
from draco.tasks.plugins import TaskOptionLimits
from draco.tasks.registry import make_task

log = logging.getLogger("draco.worker")

# Backoff between connection attempts: full jitter on an exponential ladder (dask's
# ``connect``): attempt a waits uniform(0.5, 1) * min(CAP, BASE * 2**a) seconds.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
# Digest-first vote: payloads kept for PayloadRequests, newest attempts only. The PS asks for
# the current attempt's payload only; one more covers a request crossing the next RoundStart.
HELD_PAYLOADS = 2
# OpenSSL's reasons when the bytes received are not TLS (a plain-text peer).
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
)


@dataclass(frozen=True)
class WorkerOptions:
    """What ``draco-worker`` was asked to do.

    Parameters
    ----------
    host, port : str, int
        The parameter server's address.
    tokens : Mapping[int, bytes]
        Worker id -> credential (``auth.derive_token(secret, id)``); the logical workers are
        ``sorted(tokens)``.
    attack : str or None
        Persistent liar: apply this attack every round (experiments and tests only).
    connect_timeout : float
        Seconds to keep retrying a connection (at start and after a drop) before giving up.
    join_timeout : float
        Seconds to keep retrying connections that the PS closes before welcoming us (full
        admission slots, handshake timeouts), counted from the start or the last Welcome.
    ssl_context : ssl.SSLContext or None
        TLS client context, or None for plain TCP.
    server_hostname : str or None
        Name checked against the server certificate (TLS only; default: ``host``).
    share_gradients : bool
        Share partition gradients between the logical workers of this process (see module
        docstring). Off: every logical worker computes all its partitions itself.
    allowed_tasks : frozenset of str
        Plug-in task factories (``package.module:function``) this process may import when
        the PS names one; any other is refused before anything is imported.
    device : str
        ``cpu``, ``cuda`` or ``mps``: where torch tasks compute. Not ``cpu``: a repetition
        run must use the tolerance vote (the bits differ across devices), else refused.
    task_option_limits : TaskOptionLimits
        Bounds on a plug-in task's options received from the PS.
    max_outstanding_requests : int
        Digest vote: PayloadRequests from the PS remembered per connection and not yet
        answered (``Connection.max_outstanding_requests``); a request forgotten beyond it is
        not answered. Bounds what a PS flooding requests can make the worker keep.
    """

    host: str
    port: int
    tokens: Mapping[int, bytes]
    attack: str | None = None
    connect_timeout: float = 30.0
    join_timeout: float = 120.0
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    share_gradients: bool = True
    limits: Limits = field(default_factory=Limits)
    allowed_tasks: frozenset[str] = frozenset()
    device: str = "cpu"
    task_option_limits: TaskOptionLimits = field(default_factory=TaskOptionLimits)
    max_outstanding_requests: int = MAX_OUTSTANDING_REQUESTS

    def __post_init__(self) -> None:
        check_outstanding_requests(self.max_outstanding_requests)


class _Compute:
    """The process's single compute thread, its task cache and its partition-gradient cache.

    Everything that touches a task runs in the one thread, so the caches need no locks.
    """

    def __init__(self, share_gradients: bool, options: WorkerOptions | None = None) -> None:
        # ``options``: the operator's task policy (allowlist, device, option limits); None
        # keeps the defaults (built-in tasks only, CPU).
        self.allowed_tasks = options.allowed_tasks if options else frozenset()
        self.device = options.device if options else "cpu"
        self.option_limits = options.task_option_limits if options else TaskOptionLimits()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="draco-compute"
        )
        self.share = share_gradients
        self._tasks: dict[str, Task] = {}
        # (task key, flip_labels) -> (round, params, {partition: (gradient row, seconds)})
        self._grads: dict[tuple[str, bool], tuple[int, np.ndarray, dict[int, Any]]] = {}
        # Digest vote: (digest key, size) -> [(payload, digest)] for the newest key only. The
        # members of a group in this process send bit-identical payloads: one hash, then a
        # byte comparison (~5x cheaper) for each of the others.
        self._digests: dict[tuple[bytes, int], list[tuple[np.ndarray, bytes]]] = {}

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, *args)

    def task(self, spec: dict[str, Any]) -> tuple[str, Task]:
        # Runs in the compute thread: loading a data set must not stall the event loop.
        key = json.dumps(spec, sort_keys=True)
        if key not in self._tasks:
            self._tasks[key] = make_task(
                spec,
                allowed=self.allowed_tasks,
                device=self.device,
                option_limits=self.option_limits,
            )
        return key, self._tasks[key]

    def gradients(
        self,
        key: str,
        params: np.ndarray,
        round_index: int,
        partitions: Sequence[int],
        flip_labels: bool,
    ) -> tuple[np.ndarray, float]:
        """Rows for ``partitions`` ((r, d) float32) and the CPU seconds they cost to compute."""
        task = self._tasks[key]
        # Thread CPU time, not wall time: many workers sharing a few cores must not inflate
        # it (this runs in the one compute thread; torch computes on it with one thread).
        if not self.share:
            t0 = time.thread_time()
            g = task.partition_gradients(params, round_index, partitions, flip_labels=flip_labels)
            return g, time.thread_time() - t0
        slot = self._grads.get((key, flip_labels))
        # Reuse only for the very same round AND parameters: a worker that rejoined late may be
        # on another round than its neighbours in this process.
        if slot is None or slot[0] != round_index or not np.array_equal(slot[1], params):
            slot = (round_index, params.copy(), {})
            self._grads[(key, flip_labels)] = slot
        done = slot[2]
        todo = [k for k in partitions if k not in done]
        if todo:
            t0 = time.thread_time()
            g = task.partition_gradients(params, round_index, todo, flip_labels=flip_labels)
            per = (time.thread_time() - t0) / len(todo)
            for row, k in enumerate(todo):
                done[k] = (g[row], per)
        rows = np.stack([done[k][0] for k in partitions]).astype(np.float32, copy=False)
        return rows, float(sum(done[k][1] for k in partitions))

    def digest(self, payload: np.ndarray, key: bytes, size: int) -> bytes:
        """``payload_digest(payload, key, size)``, shared between equal payloads of a round."""
        payload = np.ascontiguousarray(payload)  # bitwise_equal compares memory
        slot = (bytes(key), int(size))
        if slot not in self._digests:
            self._digests = {slot: []}  # a new round's key: the old digests are useless
        seen = self._digests[slot]
        for other, digest in seen:
            if bitwise_equal(other, payload):
                return digest
        digest = payload_digest(payload, key, size)
        seen.append((payload, digest))
        return digest

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Dropped(Exception):
    """The connection closed or broke before the run ended: reconnect."""


class _ClientProtocol(ConnectionProtocol):
    """The worker's side of a connection (``draco.net.stream``): parsed messages go to
    ``events``; ``None`` marks the end of the connection. ``conn.last_round_start`` (the newest
    RoundStart read) lets the worker drop a computation that a newer RoundStart made stale.
    """

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.events: asyncio.Queue[m.Message | None] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._closed = False

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small control frames must not wait for Nagle's timer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._can_write.set()
        if exc is not None and self.error is None:
            self.error = exc
        self._finish()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._can_write.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._can_write.set()

    # -- ConnectionProtocol ----------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._closed

    def on_message(self, msg: m.Message, wire_bytes: int) -> None:
        self.events.put_nowait(msg)

    def on_violation(self, exc: ProtocolError) -> None:
        self._fail(exc)

    def on_closed(self) -> None:
        self._finish()

    # -- helpers ---------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            # Tell the PS why (one Error is still allowed after a protocol error), then go.
            code = m.error_code_for(exc)
            with contextlib.suppress(ProtocolError):
                self.transport.writelines(self.conn.send(m.Error(code, str(exc)[:4000])))
            self.transport.close()
        self._finish()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self.events.put_nowait(None)

    async def send(self, msg: m.Message) -> None:
        """Queue ``msg``, then wait while the transport's buffer is full.

        On a connection that has ended this is a no-op: what ended it (a Bye, an Error, the
        drop) is still in ``events`` and the next ``next()`` reports it.
        """
        if self._closed or self.transport is None or self.transport.is_closing():
            return
        if self.conn.state in (State.CLOSED, State.ERROR):
            return
        self.transport.writelines(self.conn.send(msg))
        await self._can_write.wait()

    async def next(self) -> m.Message:
        event = await self.events.get()
        if event is None:
            err = self.error
            if isinstance(err, VersionMismatchError):
                raise err
            raise _Dropped(f"connection closed{f': {err}' if err else ''}")
        return event

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _error_to_exception(worker_id: int, err: m.Error) -> DracoError:
    """Map the PS's Error message to the exception the user sees."""
    text = f"worker {worker_id}: the parameter server refused us ({err.code}): {err.message}"
    if err.code == m.ErrorCode.VERSION_MISMATCH:
        return VersionMismatchError(text + " (install the same draco version on both sides)")
    if err.code == m.ErrorCode.AUTH_FAILED:
        return AuthError(text + " (is --token-file the one `draco-ps keys` issued for this id?)")
    if err.code == m.ErrorCode.SEAT_TAKEN:
        # Final at start; retried after a drop of our own (the PS may not have seen it yet).
        return SeatTakenError(text + " (is another draco-worker running with this --id?)")
    if err.code == m.ErrorCode.TIMEOUT:
        return _Retryable(text)
    return RemoteProtocolError(text)


class _Retryable(DracoError):
    """The PS closed the connection for a reason a new connection may not have."""


class LogicalWorker:
    """One worker id: its connection life cycle and its rounds."""

    def __init__(
        self, worker_id: int, token: bytes, options: WorkerOptions, compute: _Compute
    ) -> None:
        self.id = worker_id
        self.token = token
        self.options = options
        self.compute = compute
        self.rounds_sent = 0
        self.payloads_sent = 0  # digest vote: Payloads sent on request
        self.requests_skipped = 0  # digest vote: PayloadRequests not answered
        self.connections = 0
        self.welcomed = False  # at least once: from then on a dropped connection is retried
        self._session_welcomed = False
        self._rng = random.Random(worker_id)  # jitter only; seeded so tests are repeatable

    async def run(self) -> None:
        """Serve rounds until the PS says Bye. Raises DracoError on a final error."""
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive connections that ended before a Welcome
        join_deadline = loop.time() + self.options.join_timeout
        probed = False
        while True:
            proto = await self._connect()
            self.connections += 1
            welcomed_before = self.welcomed
            self._session_welcomed = False
            try:
                if await self._session(proto):
                    return
                reason: BaseException = _Dropped("connection closed")
            except SeatTakenError as exc:
                if not welcomed_before:
                    raise  # a second process with our id: final
                reason = exc  # the PS has not yet noticed our own dropped connection
            except (_Dropped, _Retryable) as exc:
                reason = exc
            finally:
                proto.close()
            if self._session_welcomed:
                failures = 0
                join_deadline = loop.time() + self.options.join_timeout
            else:
                failures += 1
                silent = proto.conn.bytes_received == 0
                if silent and self.options.ssl_context is None and not probed:
                    # Closed without a word: a TLS parameter server drops a plain Hello so.
                    probed = True
                    if await _speaks_tls(self.options.host, self.options.port):
                        raise ConfigError(
                            f"worker {self.id}: the parameter server at {self.options.host}:"
                            f"{self.options.port} speaks TLS and we do not: pass --tls-ca "
                            "(and --tls-cert/--tls-key for mTLS)"
                        )
            if loop.time() >= join_deadline:
                raise DracoError(
                    f"worker {self.id}: the parameter server did not welcome us within "
                    f"--join-timeout {self.options.join_timeout:g} s ({failures} connections "
                    f"in a row ended before a Welcome; last: {reason})"
                )
            delay = self._rng.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_BASE * 2**failures)
            log.warning("worker %d: %s; reconnecting in %.2f s", self.id, reason, delay)
            await asyncio.sleep(max(0.0, min(delay, join_deadline - loop.time())))

    async def _connect(self) -> _ClientProtocol:
        """Connect within ``connect_timeout`` with jittered exponential backoff."""
        opts = self.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.connect_timeout
        attempt = 0
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            conn = Connection(
                Role.CLIENT, opts.limits, max_outstanding_requests=opts.max_outstanding_requests
            )
            proto = _ClientProtocol(conn)
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        lambda proto=proto: proto,
                        opts.host,
                        opts.port,
                        ssl=opts.ssl_context,
                        server_hostname=(opts.server_hostname or opts.host)
                        if opts.ssl_context
                        else None,
                    ),
                    timeout=remaining,
                )
                return proto
            except socket.gaierror as exc:
                raise ConfigError(
                    f"cannot resolve the parameter server's host {opts.host!r}: {exc}"
                ) from exc
            except ssl.SSLError as exc:
                if exc.reason in _NOT_TLS_REASONS:
                    raise ConfigError(
                        f"worker {self.id}: the parameter server at {opts.host}:{opts.port} "
                        "does not speak TLS (it answered in plain text): drop --tls-ca/"
                        "--tls-cert/--tls-key, or start draco-ps with --tls-cert/--tls-key"
                    ) from exc
                raise AuthError(
                    f"TLS handshake with {opts.host}:{opts.port} failed: {exc} "
                    "(check --tls-ca / --tls-cert / --tls-key)"
                ) from exc
            except (OSError, asyncio.TimeoutError) as exc:
                last = exc
            delay = self._rng.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
            attempt += 1
            await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
        reason = f": {last}" if last and str(last) else ""
        raise DracoError(
            f"worker {self.id}: could not connect to the parameter server at "
            f"{opts.host}:{opts.port} within {opts.connect_timeout:g} s{reason} "
            "(is draco-ps running there? check --ps)"
        )

    async def _session(self, proto: _ClientProtocol) -> bool:
        """Handshake then rounds. True when the PS ended the run; raises _Dropped to retry."""
        # The handshake is bounded (a port that accepts but never answers is not a PS);
        # the rounds are not: a PS may wait long for the other workers to join.
        limit = self.options.connect_timeout
        try:
            msg = await asyncio.wait_for(self._handshake(proto), limit)
        except asyncio.TimeoutError:
            raise _Retryable(f"no handshake reply within {limit:g} s") from None
        if isinstance(msg, m.Error):
            return self._ended_by(msg)
        if isinstance(msg, m.Bye):
            log.info("worker %d: the PS ended the run (%s)", self.id, msg.reason)
            return True
        if not isinstance(msg, m.Welcome):
            raise RemoteProtocolError(f"worker {self.id}: expected Welcome, got {msg!r}")
        try:
            setup = await self._setup(msg.config)
        except ConfigError as exc:
            # Final for us; tell the PS why before going, so its operator sees it too.
            await proto.send(m.Error(m.ErrorCode.REFUSED_CONFIG, str(exc)[:4000]))
            raise
        self.welcomed = self._session_welcomed = True
        log.info("worker %d: joined (partitions %s)", self.id, setup.partitions)
        held: dict[tuple[int, int], np.ndarray] = {}  # digest vote: payloads kept for requests
        while True:
            msg = await proto.next()
            if isinstance(msg, m.Bye):
                log.info("worker %d: run ended (%s)", self.id, msg.reason)
                return True
            if isinstance(msg, m.Error):
                return self._ended_by(msg)
            if isinstance(msg, m.PayloadRequest):
                await self._answer_request(proto, msg, held)
                continue
            if not isinstance(msg, m.RoundStart):
                raise RemoteProtocolError(f"worker {self.id}: unexpected {type(msg).__name__}")
            if self._superseded(msg, proto):
                continue  # a newer round or attempt is already queued: this one is stale
            payload, seconds = await self._round(setup, msg)
            if self._superseded(msg, proto):
                continue  # the PS moved on while we computed; a late payload is useless
            if msg.digest_key:
                key = (msg.round_index, msg.attempt)
                digest = await self.compute.run(
                    self.compute.digest, payload, msg.digest_key, setup.digest_bytes
                )
                held[key] = payload
                for old in sorted(held)[:-HELD_PAYLOADS]:
                    del held[old]
                await proto.send(
                    m.Digest(
                        round_index=msg.round_index,
                        attempt=msg.attempt,
                        digest=digest,
                        compute_seconds=seconds,
                    )
                )
                self.rounds_sent += 1
                continue
            await proto.send(
                m.Gradient(
                    round_index=msg.round_index,
                    payload=payload,
                    compute_seconds=seconds,
                    attempt=msg.attempt,
                )
            )
            self.rounds_sent += 1

    async def _answer_request(
        self,
        proto: _ClientProtocol,
        msg: m.PayloadRequest,
        held: dict[tuple[int, int], np.ndarray],
    ) -> None:
        """Send the requested payload, at most once per (round, attempt).

        Not answered: a payload no longer (or never) held, one already sent (popped from
        ``held``: an honest PS asks a worker once per attempt, so a repeated request is a
        flood, which must not make us upload d floats per tiny request), and a request the
        connection forgot (more than ``max_outstanding_requests`` outstanding). A skipped
        request costs a counter, not a log line each (a flood must not flood the log).
        """
        key = (msg.round_index, msg.attempt)
        payload = held.pop(key, None)
        if payload is None or not proto.conn.is_requested(*key):
            self.requests_skipped += 1
            if self.requests_skipped == 1:
                log.info(
                    "worker %d: not answering the payload request for round %d attempt %d "
                    "(not held, already sent, or forgotten); further ones are only counted",
                    self.id,
                    msg.round_index,
                    msg.attempt,
                )
            return
        await proto.send(
            m.Payload(round_index=msg.round_index, attempt=msg.attempt, payload=payload)
        )
        self.payloads_sent += 1

    def _superseded(self, msg: m.RoundStart, proto: _ClientProtocol) -> bool:
        """A newer (round, attempt) has been read: answering ``msg`` would be useless."""
        return (msg.round_index, msg.attempt) < proto.conn.last_round_start

    async def _handshake(self, proto: _ClientProtocol) -> m.Message:
        """Hello -> Challenge -> Auth; returns the PS's answer (Welcome, Error or Bye)."""
        await proto.send(m.Hello(protocol_version=PROTOCOL_VERSION, worker_id=self.id))
        msg = await proto.next()
        if not isinstance(msg, m.Challenge):
            return msg
        await proto.send(m.Auth(mac=handshake_mac(self.token, msg.nonce, self.id)))
        return await proto.next()

    def _ended_by(self, err: m.Error) -> bool:
        """The PS closed with an Error: True if that ends the run for us, else raise."""
        if err.code == "shutdown":
            log.warning(
                "worker %d: the parameter server is shutting down: %s", self.id, err.message
            )
            return True
        raise _error_to_exception(self.id, err)

    async def _setup(self, config: dict[str, Any]) -> _Setup:
        try:
            n, s = int(config["n_workers"]), int(config["n_adversaries"])
            code = make_code(str(config["code"]), n, s, **dict(config.get("code_options") or {}))
            partitions = tuple(int(k) for k in config["partitions"])
            spec = dict(config["task"])
            seed = int(config.get("seed", 0))
            attack_options = dict(config.get("attack_options") or {})
            digest_bytes = check_digest_bytes(
                int(config.get("digest_bytes", DEFAULT_DIGEST_BYTES)), "Welcome digest_bytes"
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"worker {self.id}: malformed Welcome config: {exc}") from exc
        self._check_vote(code)
        if tuple(code.partitions_of(self.id)) != partitions:
            raise RemoteProtocolError(
                f"worker {self.id}: the PS assigned partitions {partitions} but the code "
                f"{code.name!r} gives {tuple(code.partitions_of(self.id))}"
            )
        key, task = await self.compute.run(self.compute.task, spec)
        if "dim" in config and int(config["dim"]) != task.dim:
            raise ConfigError(
                f"worker {self.id}: the task has {task.dim} parameters, the PS expects "
                f"{config['dim']} (different package versions?)"
            )
        persistent = make_attack(self.options.attack) if self.options.attack else None
        return _Setup(
            code, partitions, key, task, n, s, seed, persistent, attack_options, digest_bytes
        )

    def _check_vote(self, code: Any) -> None:
        """A non-CPU device needs the tolerance vote (see draco.tasks.torch.device)."""
        device = self.options.device
        if device == "cpu":
            return
        if code.name == "repetition" and getattr(code, "rtol", None) is None:
            raise ConfigError(
                f"worker {self.id}: --device {device} cannot give bit-identical gradients "
                "across workers, and the PS runs the repetition code's exact vote: restart "
                "draco-ps with --vote tolerance, or run this worker with --device cpu"
            )
        if code.name == "cyclic":
            log.warning(
                "worker %d: --device %s with the cyclic code: its decoder refuses a round "
                "whose honest payloads disagree beyond its measured noise floor",
                self.id,
                device,
            )

    async def _round(self, setup: _Setup, msg: m.RoundStart) -> tuple[np.ndarray, float]:
        """Gradient, encode and (maybe) attack for one round."""
        attack = setup.persistent
        attack_seed: Any = [setup.seed, msg.round_index, self.id]
        if msg.attack is not None:
            attack = make_attack(msg.attack, **setup.attack_options)
            attack_seed = msg.attack_seed
        flip = attack is not None and attack.data_attack
        params = np.asarray(msg.params, dtype=np.float32)
        grads, seconds = await self.compute.run(
            self.compute.gradients, setup.key, params, msg.round_index, setup.partitions, flip
        )
        payload = setup.code.encode(self.id, grads)
        if attack is not None and not attack.data_attack:
            if attack.omniscient:
                # Omniscient attacks are simulated at the PS; a worker cannot see the others.
                log.warning("worker %d: ignoring omniscient attack %s", self.id, attack.name)
            else:
                payload = attack.apply(
                    payload,
                    rng=np.random.default_rng(attack_seed),
                    n_workers=setup.n,
                    n_adversaries=setup.s,
                )
        return payload, seconds


@dataclass(frozen=True)
class _Setup:
    code: Any
    partitions: tuple[int, ...]
    key: str
    task: Task
    n: int
    s: int
    seed: int
    persistent: Any
    attack_options: dict[str, Any] = field(default_factory=dict)
    digest_bytes: int = DEFAULT_DIGEST_BYTES


async def _speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
    """True if ``host:port`` completes (or refuses with a TLS alert) a TLS handshake.

    Used only to explain a connection that a parameter server closed without a byte.
    Certificates are not checked: nothing is sent over this connection.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout
        )
    except ssl.SSLError as exc:
        return exc.reason not in _NOT_TLS_REASONS and "ALERT" in str(exc.reason or "")
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def run_workers(options: WorkerOptions) -> None:
    """Run every logical worker of ``options`` until the PS ends the run.

    A final error of one logical worker is logged and does not stop the others; once all
    have ended, the first such error is raised (``DracoError``).
    """
    if not options.tokens:
        raise ConfigError("no worker ids to run")
    # Unknown attack names, and attacks a lone worker cannot mount, fail before connecting.
    if options.attack is not None and make_attack(options.attack).omniscient:
        raise ConfigError(
            f"attack {options.attack!r} needs the honest payloads of the others; run it "
            "with draco-ps --attack (simulated at the PS) instead of draco-worker --attack"
        )
    compute = _Compute(options.share_gradients, options)
    workers = [
        LogicalWorker(wid, options.tokens[wid], options, compute) for wid in sorted(options.tokens)
    ]
    tasks = [asyncio.create_task(w.run(), name=f"worker-{w.id}") for w in workers]
    try:
        failures: list[BaseException] = []
        for fut in asyncio.as_completed(tasks):
            try:
                await fut
            except DracoError as exc:
                # Only this logical worker is done; its siblings keep their seats.
                if len(tasks) > 1:
                    log.error("%s", exc)
                failures.append(exc)
        if failures:
            raise failures[0]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        compute.close()
