"""One connection of the parameter server: ``Peer``, bytes in, messages out to a handler.

A ``Peer`` is an ``asyncio.BufferedProtocol`` (``draco.net.stream.ConnectionProtocol``) over
a sans-IO ``Connection``: a payload's bytes land directly in their final numpy array. It adds
the server side's TLS upgrade (``loop.start_tls`` after admission) and reports every event to
a ``PeerHandler`` (the ``ParameterServer``, or the benchmark's sink).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any, Protocol, cast

from draco.errors import ProtocolError
from draco.net import messages as m
from draco.net.protocol import Connection, State
from draco.net.stream import ConnectionProtocol

__all__ = ["Peer", "PeerHandler"]


class PeerHandler(Protocol):
    """What a ``Peer`` reports to (the ``ParameterServer``, or the benchmark's sink)."""

    def peer_connected(self, peer: Peer) -> None: ...

    def peer_message(self, peer: Peer, msg: m.Message, wire_bytes: int) -> None: ...

    def peer_violation(self, peer: Peer, exc: ProtocolError) -> None: ...

    def peer_lost(self, peer: Peer) -> None: ...


class Peer(ConnectionProtocol):
    """One connection: bytes in through the sans-IO ``Connection``, messages to a handler.

    Attributes
    ----------
    conn : Connection
        The protocol state (server role).
    worker_id : int or None
        The authenticated worker id (None until the handshake succeeded).
    messages_in_round : int
        Messages received since the last RoundStart sent or the last Gradient that answered
        a newer (round, attempt): bounded by the server's ``max_messages_per_round``.
    """

    def __init__(
        self,
        handler: PeerHandler,
        conn: Connection,
        tls: ssl.SSLContext | None = None,
        tls_timeout: float = 5.0,
    ) -> None:
        super().__init__(conn)
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.peername: Any = None
        # False: set TCP_NODELAY in connection_made; the server sets it only once seated.
        self.handler_sets_nodelay = bool(getattr(handler, "sets_nodelay", False))
        self.tls = tls  # upgrade to TLS right after connection_made (server side)
        self.tls_timeout = float(tls_timeout)  # seconds for the TLS handshake
        self.tls_pending = tls is not None  # True until the TLS handshake completed
        self._tls_task: asyncio.Task[None] | None = None
        # uvloop starts reading right after connection_made whatever pause_reading said, so
        # bytes of the ClientHello may reach us before start_tls took over: they are kept
        # here and handed to the TLS layer (bounded: a ClientHello is a few KB).
        self._tls_early = bytearray()
        self._tls_buffer: bytearray | None = None
        # True while bytes come from the raw TCP transport, i.e. until the TLS layer took
        # over (its decrypted data may arrive before start_tls returns to us).
        self._raw_phase = tls is not None
        # Frames sent after the TLS handshake completed but before start_tls handed us the
        # TLS transport (a Challenge answering an early Hello); flushed on the hand-over.
        self._tls_outbox: list[bytes | memoryview] = []
        self._close_after_tls = False
        self.worker_id: int | None = None
        self.messages_in_round = 0
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.lost = asyncio.Event()

    def __repr__(self) -> str:
        who = f"worker {self.worker_id}" if self.worker_id is not None else "unauthenticated"
        return f"<Peer {who} {self.peername}>"

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.peername = transport.get_extra_info("peername")
        if not self.handler_sets_nodelay:
            self.set_nodelay()
        if self.tls is not None:
            # Not a byte is read in plain text: start_tls takes over the reading.
            self.transport.pause_reading()
        self.handler.peer_connected(self)  # admission, before any TLS work is spent on it
        if self.tls is not None and not self.closed:
            loop = asyncio.get_running_loop()
            self._tls_task = asyncio.ensure_future(self._start_tls(self.tls))
            # Runs after the task's first step (start_tls swapped the protocol) and after
            # the TLS layer's connection_made, before any further read (see _tls_early).
            loop.call_soon(loop.call_soon, self._feed_early_bytes)

    def _feed_early_bytes(self) -> None:
        self._raw_phase = False  # from here on, get_buffer is the TLS layer's
        early, self._tls_early = self._tls_early, bytearray()
        self._tls_buffer = None
        raw = self.transport
        if not early or raw is None or self.closed:
            return
        layer: Any = raw.get_protocol()  # uvloop's SSLProtocol: no asyncio base class
        if layer is self:
            self.abort()  # the upgrade did not start: nothing can take these bytes
            return
        if not hasattr(layer, "buffer_updated"):
            layer.data_received(bytes(early))
            return
        view = memoryview(early)
        while view.nbytes and not self.closed:
            buf = layer.get_buffer(view.nbytes)
            n = min(len(buf), view.nbytes)
            buf[:n] = view[:n]
            layer.buffer_updated(n)
            view = view[n:]

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade the accepted TCP connection to TLS (server side), bounded in time."""
        loop = asyncio.get_running_loop()
        raw = self.transport
        assert raw is not None
        try:
            tls = await loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self.tls_timeout
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
            tell = getattr(self.handler, "peer_tls_failed", None)
            if tell is not None:
                tell(self, exc)
            # The traceback's frames hold start_tls's future, which holds exc: a cycle that
            # keeps this peer and its TLS state alive until a full GC. Cut it.
            exc.__traceback__ = None
            raw.abort()
            self.connection_lost(exc)  # idempotent; a failed upgrade may not report it
            return
        finally:
            self._tls_task = None
        if tls is None or (self.closed and not self._close_after_tls):
            raw.abort()
            self.connection_lost(None)
            return
        self.transport = cast(asyncio.Transport, tls)
        self.tls_pending = False
        outbox, self._tls_outbox = self._tls_outbox, []
        if outbox:
            self.transport.writelines(outbox)
        if self._close_after_tls:
            self.transport.close()

    def set_nodelay(self) -> None:
        """TCP_NODELAY: control frames (RoundStart headers, Bye) must not wait for Nagle.

        The server calls it once a peer is seated (not for every unauthenticated socket of a
        flood: each call costs a syscall and, under uvloop, a socket wrapper object).
        """
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._raw_phase:
            if self._tls_buffer is None:
                self._tls_buffer = bytearray(16 * 1024)
            return memoryview(self._tls_buffer)
        return super().get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._raw_phase:
            assert self._tls_buffer is not None
            self._tls_early += self._tls_buffer[:nbytes]
            if len(self._tls_early) > 64 * 1024:
                self.abort()  # no TLS client sends that much before the server answers
            return
        super().buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        if self._raw_phase:
            return None  # gone before its TLS handshake: close
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost.is_set():
            return  # a failed TLS upgrade reports it once itself
        self.closed = True
        self.write_paused = False
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self._tls_task is not None:
            self._tls_task.cancel()
        self.lost.set()
        self.handler.peer_lost(self)
        # Break the protocol <-> transport cycle now: a dead TLS connection holds ~400 KB
        # (the SSL object and its buffers) that would otherwise wait for the cyclic GC.
        self.transport = None

    # -- ConnectionProtocol: events go to the handler

    @property
    def stopped(self) -> bool:
        return self.closed

    def on_message(self, msg: m.Message, wire_bytes: int) -> None:
        self.handler.peer_message(self, msg, wire_bytes)

    def on_violation(self, exc: ProtocolError) -> None:
        self.handler.peer_violation(self, exc)

    def on_closed(self) -> None:
        self.close()

    # -- helpers

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
        if self.tls_pending:
            # Never plain text onto a connection meant to be TLS: held for the TLS transport.
            self._tls_outbox.extend(chunks)
        else:
            self.transport.writelines(chunks)
        return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)

    def close(self, last: m.Bye | m.Error | None = None) -> None:
        """Send ``last`` (if any), flush and close."""
        if last is not None:
            self.send(last)
        if self.tls_pending and not self._raw_phase and self._tls_task is not None:
            # TLS is up but not yet handed over: close once the held frames are flushed.
            self._close_after_tls = True
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True
