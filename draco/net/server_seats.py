"""Who holds a seat: admission, the handshake, and peers that leave or break the rules.

Handshake under ``--handshake-timeout``: Hello -> Challenge(fresh nonce) -> Auth(mac) ->
constant-time check against the cluster secret -> Welcome(config). Before that no tensor byte
is accepted; after it the frame limits are exactly one payload of the run's code. One seat
per worker id: an authenticated second connection for an occupied seat gets
``Error("seat_taken")``. Who may hold a pre-authentication slot is the sans-IO policy
``draco.net.admission``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from draco.errors import AuthError, ProtocolError, SeatTakenError
from draco.net import auth
from draco.net import messages as m
from draco.net.peer import Peer
from draco.net.server_ready import EarlyClose
from draco.net.server_state import log, source_of


class Seats(EarlyClose):
    """The ``PeerHandler`` side of connections: admission, handshake, seats, violations."""

    def peer_connected(self, peer: Peer) -> None:
        if not self._accepting:
            peer.abort()
            return
        loop = asyncio.get_running_loop()
        decision = self.admission.open(peer, source_of(peer), loop.time())
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
        if isinstance(exc, ssl.SSLError) and exc.reason in auth.NOT_TLS_REASONS:
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
            delay = self.admission.auth_delay(source_of(peer), loop.time())
            if delay > 0:
                # Throttled source: this answer waits; the handshake deadline still runs.
                self._admission_log(
                    logging.WARNING,
                    "throttle",
                    "throttling authentication from %s (too many failures): %.2f s delay",
                    source_of(peer),
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
                self.admission.auth_failed(source_of(peer), loop.time())
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
