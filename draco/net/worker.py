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

This module is the connection loop (steps 1, 2 and 5, and the dispatch of step 4). The
gradient job of step 4 (one compute thread per process, gradients shared between the logical
workers of a process) is ``draco.net.worker_compute``; the digest vote's side
(``Digest``, held payloads, ``PayloadRequest``) is ``draco.net.worker_digest``; the asyncio
client protocol and the mapping of the PS's errors, ``draco.net.worker_client``.

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
import logging
import random
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from draco.core.attacks import make_attack
from draco.errors import AuthError, ConfigError, DracoError, RemoteProtocolError, SeatTakenError
from draco.net import messages as m
from draco.net.auth import NOT_TLS_REASONS, handshake_mac
from draco.net.frames import PROTOCOL_VERSION, Limits
from draco.net.protocol import (
    MAX_OUTSTANDING_REQUESTS,
    Connection,
    Role,
    check_outstanding_requests,
)
from draco.net.worker_client import (
    ClientProtocol,
    Dropped,
    Retryable,
    error_to_exception,
    speaks_tls,
)
from draco.net.worker_compute import Compute, RoundSetup, round_payload, setup_from_welcome
from draco.net.worker_digest import HeldPayloads, answer_request, send_digest
from draco.tasks.plugins import TaskOptionLimits

__all__ = ["LogicalWorker", "WorkerOptions", "run_workers"]

log = logging.getLogger("draco.worker")

# Backoff between connection attempts: full jitter on an exponential ladder (dask's
# ``connect``): attempt a waits uniform(0.5, 1) * min(CAP, BASE * 2**a) seconds.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0


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


class LogicalWorker:
    """One worker id: its connection life cycle and its rounds."""

    def __init__(
        self, worker_id: int, token: bytes, options: WorkerOptions, compute: Compute
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
                reason: BaseException = Dropped("connection closed")
            except SeatTakenError as exc:
                if not welcomed_before:
                    raise  # a second process with our id: final
                reason = exc  # the PS has not yet noticed our own dropped connection
            except (Dropped, Retryable) as exc:
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
                    if await speaks_tls(self.options.host, self.options.port):
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

    async def _connect(self) -> ClientProtocol:
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
            proto = ClientProtocol(conn)
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
                if exc.reason in NOT_TLS_REASONS:
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

    async def _session(self, proto: ClientProtocol) -> bool:
        """Handshake then rounds. True when the PS ended the run; raises Dropped to retry."""
        welcome = await self._join(proto)
        if isinstance(welcome, bool):
            return welcome
        setup = welcome
        held = HeldPayloads()  # digest vote: payloads kept for the PS's requests
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
            await self._answer_round(proto, setup, msg, held)

    async def _join(self, proto: ClientProtocol) -> RoundSetup | bool:
        """Handshake and Welcome: the session's setup, or True/False when the PS ended the
        run instead (``_ended_by``)."""
        # The handshake is bounded (a port that accepts but never answers is not a PS);
        # the rounds are not: a PS may wait long for the other workers to join.
        limit = self.options.connect_timeout
        try:
            msg = await asyncio.wait_for(self._handshake(proto), limit)
        except asyncio.TimeoutError:
            raise Retryable(f"no handshake reply within {limit:g} s") from None
        if isinstance(msg, m.Error):
            return self._ended_by(msg)
        if isinstance(msg, m.Bye):
            log.info("worker %d: the PS ended the run (%s)", self.id, msg.reason)
            return True
        if not isinstance(msg, m.Welcome):
            raise RemoteProtocolError(f"worker {self.id}: expected Welcome, got {msg!r}")
        try:
            setup = await setup_from_welcome(
                self.compute, self.id, msg.config, self.options.attack, self.options.device
            )
        except ConfigError as exc:
            # Final for us; tell the PS why before going, so its operator sees it too.
            await proto.send(m.Error(m.ErrorCode.REFUSED_CONFIG, str(exc)[:4000]))
            raise
        self.welcomed = self._session_welcomed = True
        log.info("worker %d: joined (partitions %s)", self.id, setup.partitions)
        return setup

    async def _answer_round(
        self, proto: ClientProtocol, setup: RoundSetup, msg: m.RoundStart, held: HeldPayloads
    ) -> None:
        """Compute the round's payload and send it (or its digest), unless superseded."""
        if self._superseded(msg, proto):
            return  # a newer round or attempt is already queued: this one is stale
        payload, seconds = await round_payload(self.compute, setup, self.id, msg)
        if self._superseded(msg, proto):
            return  # the PS moved on while we computed; a late payload is useless
        if msg.digest_key:
            await send_digest(proto, self.compute, msg, payload, seconds, setup.digest_bytes, held)
        else:
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
        self, proto: ClientProtocol, msg: m.PayloadRequest, held: HeldPayloads
    ) -> None:
        """Answer a PayloadRequest (``worker_digest.answer_request``) and count it. A skipped
        request costs a counter, not a log line each (a flood must not flood the log)."""
        if await answer_request(proto, msg, held):
            self.payloads_sent += 1
            return
        self.requests_skipped += 1
        if self.requests_skipped == 1:
            log.info(
                "worker %d: not answering the payload request for round %d attempt %d "
                "(not held, already sent, or forgotten); further ones are only counted",
                self.id,
                msg.round_index,
                msg.attempt,
            )

    def _superseded(self, msg: m.RoundStart, proto: ClientProtocol) -> bool:
        """A newer (round, attempt) has been read: answering ``msg`` would be useless."""
        return (msg.round_index, msg.attempt) < proto.conn.last_round_start

    async def _handshake(self, proto: ClientProtocol) -> m.Message:
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
        raise error_to_exception(self.id, err)


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
    compute = Compute(
        options.share_gradients,
        allowed_tasks=options.allowed_tasks,
        device=options.device,
        option_limits=options.task_option_limits,
    )
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
