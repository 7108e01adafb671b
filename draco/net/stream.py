"""The asyncio side of a sans-IO ``Connection``, written once for the PS's peers and the
workers: bytes from the transport go straight into the Connection's buffers
(``asyncio.BufferedProtocol``), complete messages come out of :meth:`pump`.

Subclasses say what a message, a protocol violation and the end of the stream mean to them
(``on_message``, ``on_violation``, ``on_closed``) and when to stop reading events
(``stopped``). ``draco.net.server.Peer`` adds TLS and the admission hooks,
``draco.net.worker``'s client protocol a message queue.
"""

from __future__ import annotations

import asyncio

from draco.errors import ProtocolError
from draco.net import messages as m
from draco.net.protocol import Closed, Connection, NeedData

__all__ = ["ConnectionProtocol"]


class ConnectionProtocol(asyncio.BufferedProtocol):
    """A ``Connection`` behind an asyncio transport.

    Attributes
    ----------
    conn : Connection
    write_paused : bool
        True between the transport's ``pause_writing`` and ``resume_writing`` (its buffer
        is above the high-water mark: the peer is not reading).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.write_paused = False
        self._mark = 0  # conn.bytes_received at the previous message

    # -- what a subclass decides

    @property
    def stopped(self) -> bool:
        """True once no more events should be read (the connection is over for us)."""
        raise NotImplementedError

    def on_message(self, msg: m.Message, wire_bytes: int) -> None:
        """A complete message; ``wire_bytes``: its size on the wire (frame included)."""
        raise NotImplementedError

    def on_violation(self, exc: ProtocolError) -> None:
        """The peer broke the protocol (the Connection is dead: one Error may be sent)."""
        raise NotImplementedError

    def on_closed(self) -> None:
        """The peer closed cleanly (Bye / Error received, or EOF between frames)."""
        raise NotImplementedError

    # -- asyncio callbacks

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.buffer_updated(nbytes)
        # A read that ends inside a tensor cannot complete a message: no pump (the PS reads a
        # payload in up to thousands of chunks).
        if not self.conn.mid_frame_body:
            self.pump()

    def eof_received(self) -> bool | None:
        try:
            self.conn.receive_data(b"")
        except ProtocolError as exc:
            self.on_violation(exc)
            return None
        self.pump()
        return None  # close our side too

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    # -- events

    def pump(self) -> None:
        """Hand every complete message to ``on_message``, until NEED_DATA or the end."""
        while not self.stopped:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                self.on_violation(exc)
                return
            if isinstance(event, NeedData):
                return
            if isinstance(event, Closed):
                self.on_closed()
                return
            received = self.conn.bytes_received
            wire, self._mark = received - self._mark, received
            self.on_message(event, wire)
