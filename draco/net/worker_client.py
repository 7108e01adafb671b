"""The worker's connection to the PS: the asyncio client protocol and what ends a connection.

``ClientProtocol`` is a ``draco.net.stream.ConnectionProtocol`` whose parsed messages go to
a queue that the session loop (``draco.net.worker``) awaits. ``error_to_exception`` maps the
PS's Error message to the exception the user sees; ``speaks_tls`` explains a connection that
a TLS parameter server dropped without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import cast

from draco.errors import (
    AuthError,
    DracoError,
    ProtocolError,
    RemoteProtocolError,
    SeatTakenError,
    VersionMismatchError,
)
from draco.net import messages as m
from draco.net.auth import NOT_TLS_REASONS
from draco.net.protocol import Connection, State
from draco.net.stream import ConnectionProtocol

__all__ = [
    "ClientProtocol",
    "Dropped",
    "Retryable",
    "error_to_exception",
    "speaks_tls",
]


class Dropped(Exception):
    """The connection closed or broke before the run ended: reconnect."""


class Retryable(DracoError):
    """The PS closed the connection for a reason a new connection may not have."""


class ClientProtocol(ConnectionProtocol):
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
            raise Dropped(f"connection closed{f': {err}' if err else ''}")
        return event

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def error_to_exception(worker_id: int, err: m.Error) -> DracoError:
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
        return Retryable(text)
    return RemoteProtocolError(text)


async def speaks_tls(host: str, port: int, timeout: float = 3.0) -> bool:
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
        return exc.reason not in NOT_TLS_REASONS and "ALERT" in str(exc.reason or "")
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True
