"""The asyncio parameter server: a thin shell of sockets and timers over ``draco.ps.engine``.

Run it with ``draco-ps`` (``cli/ps.py``), e.g.::

    draco-ps keys --secret-file ps.secret --workers 15 --out tokens.txt --create-secret
    draco-ps --workers 15 --adversaries 2 --code repetition --attack constant \\
             --model lstsq --rounds 100 --secret-file ps.secret --run-dir runs/demo
    draco-worker --ps 127.0.0.1:7000 --id 0 --count 15 --token-file tokens.txt

What the shell does (the round logic itself is ``draco.ps.engine.RoundEngine``), and where:

1. ``draco.net.peer`` (one connection), 2. ``server_seats`` (admission, handshake),
3. ``server_rounds`` (rounds, attempts, retries) with ``server_ready`` (early close) and
``server_fetch`` (the digest vote's payload requests), 4. this module (life cycle: listen,
serve, stop, shut down). ``server_state`` holds the state they share.

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
import os
import sys
from dataclasses import dataclass

from draco.errors import DracoError, ProtocolError
from draco.net import messages as m
from draco.net.peer import Peer
from draco.net.protocol import Connection, Role
from draco.net.server_rounds import RoundDriver
from draco.net.server_state import (
    EXIT_COMPLETED,
    EXIT_DIVERGED,
    EXIT_FAILED,
    RunHooks,
    log,
    retain_freed_memory,
)

__all__ = [
    "EXIT_COMPLETED",
    "EXIT_DIVERGED",
    "EXIT_FAILED",
    "ParameterServer",
    "RunHooks",
    "RunOutcome",
]

# CPython's GIL switch interval while serving, seconds. The helper thread (decode, cyclic
# ready) runs Python between its numpy calls; at the default 5 ms the event loop can wait that
# long for the GIL at each handoff. Measured (shared 2-core VM, load 7-9) with a thread
# running the cyclic ready() at n = 15, d = 1M, the main thread's largest sleep(1 ms) gap:
# 19-27 ms at 5 ms, 8-10 ms at 1 ms (idle: 4-11 ms); decode 13-16 ms vs 7-8 ms.
GIL_SWITCH_INTERVAL = 0.001


@dataclass(frozen=True)
class RunOutcome:
    """How ``serve`` ended: ``exit_code`` 0 only for a completed run, 3 for a diverged one."""

    exit_code: int
    reason: str

    @property
    def completed(self) -> bool:
        return self.exit_code == EXIT_COMPLETED

    @property
    def diverged(self) -> bool:
        """The model diverged: a final outcome (rerunning retraces the same steps)."""
        return self.exit_code == EXIT_DIVERGED


class ParameterServer(RoundDriver):
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
        Per-round callback: ``draco.ps.recorder.RunRecorder`` (metrics, checkpoints,
        progress) receives each round's frozen ``RoundRecord``.
    ssl_context : ssl.SSLContext, optional
        TLS for the listener.
    """

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
        if self.engine.diverged:
            return RunOutcome(
                EXIT_DIVERGED, f"round {self.engine.next_round}: {self.engine.diverged}"
            )
        if self.engine.stopped:
            return RunOutcome(EXIT_FAILED, self._stopped_reason())
        return RunOutcome(EXIT_COMPLETED, f"completed {self.engine.rounds} rounds")

    async def _wait_for_workers(self) -> None:
        """Until every seat is taken, the join timeout, or a stop request."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        await self._sleep_until(
            loop.time() + self.config.join_timeout, lambda: len(self.seats) >= self.n_workers
        )
        if len(self.seats) < self.n_workers:
            missing = sorted(set(range(self.n_workers)) - set(self.seats))
            log.warning("starting without workers %s (join timeout)", missing)

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
