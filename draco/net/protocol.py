"""The per-peer protocol state machine, h11-style: bytes in, messages out; messages in, bytes out.

No asyncio, no sockets: the asyncio shells (``server.py``, ``worker.py``) own the transport
and the timers and call into a :class:`Connection`::

    conn = Connection(Role.SERVER, limits)
    # BufferedProtocol.get_buffer / buffer_updated -> conn.get_buffer / conn.buffer_updated
    # (or data_received -> conn.receive_data; eof_received / connection_lost -> receive_data(b""))
    while True:
        event = conn.next_event()          # RemoteProtocolError on hostile input
        if event is NEED_DATA: break
        if event is CLOSED: ...            # peer closed (EOF between frames) or Bye/Error seen
        handle(event)                      # a Message
    transport.writelines(conn.send(msg))   # LocalProtocolError if illegal now

All legal transitions are in the table :data:`TRANSITIONS`. ``Bye`` and ``Error`` are legal
in every open state, in both directions, and end the connection (state ``CLOSED``).

Digest-first vote: a ``Payload`` is legal only as the answer to a ``PayloadRequest`` (same
round and attempt) sent on this connection and not yet answered. Both sides keep the set of
outstanding requests (at most ``max_outstanding_requests``; the oldest is forgotten beyond
it). An answer to request k also retires every older request (answers come in request order,
and a worker may skip a request a newer round made useless), so a duplicate or unsolicited
``Payload`` is a remote protocol error found by the state machine alone.

Tensor bytes before authentication: before the connection reaches ``READY`` (the server sent
/ the client received ``Welcome``), its decoder runs with ``limits.pre_auth()`` -- zero tensor
bytes, zero tensors -- so an unauthenticated peer cannot make either side allocate more than
one bounded header. The ``limits`` given (or assigned later) apply from ``READY`` on.
"""

from __future__ import annotations

import bisect
import enum
from typing import Final

from draco.errors import (
    ConfigError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from draco.net.frames import PROTOCOL_VERSION, Allocate, FrameDecoder, Limits, encode_frame
from draco.net.messages import (
    Auth,
    Bye,
    Challenge,
    Digest,
    Error,
    Gradient,
    Hello,
    Message,
    Payload,
    PayloadRequest,
    RoundStart,
    Welcome,
    from_wire,
    to_wire,
)

__all__ = [
    "CLOSED",
    "MAX_OUTSTANDING_REQUESTS",
    "MAX_OUTSTANDING_REQUESTS_CAP",
    "NEED_DATA",
    "TRANSITIONS",
    "Closed",
    "Connection",
    "NeedData",
    "Role",
    "State",
    "check_outstanding_requests",
]


class Role(enum.Enum):
    """Which end of the connection we are."""

    SERVER = "server"  # the parameter server
    CLIENT = "client"  # one logical worker


class State(enum.Enum):
    """Connection states (server and client states share one enum)."""

    # server side
    AWAIT_HELLO = "await_hello"
    SEND_CHALLENGE = "send_challenge"
    AWAIT_AUTH = "await_auth"
    AUTHENTICATING = "authenticating"  # Auth received: the shell verifies, then Welcome/Error
    # client side
    SEND_HELLO = "send_hello"
    AWAIT_CHALLENGE = "await_challenge"
    SEND_AUTH = "send_auth"
    AWAIT_WELCOME = "await_welcome"
    # both
    READY = "ready"  # rounds: server sends RoundStart, client sends Gradient
    CLOSED = "closed"  # Bye/Error sent or received, or clean EOF
    ERROR = "error"  # a protocol error happened; only one Error message may still be sent


class _Sentinel:
    """A type with one instance, shown by its constant's name (h11's sentinels)."""

    _name = ""

    def __new__(cls) -> _Sentinel:
        instance = cls.__dict__.get("_instance")
        if instance is None:
            instance = super().__new__(cls)
            cls._instance = instance
        return instance

    def __repr__(self) -> str:
        return self._name


class NeedData(_Sentinel):
    """Sentinel type: :meth:`Connection.next_event` needs more bytes."""

    _name = "NEED_DATA"


class Closed(_Sentinel):
    """Sentinel type: the connection is over (peer EOF between frames, or Bye/Error)."""

    _name = "CLOSED"


NEED_DATA: Final = NeedData()
CLOSED: Final = Closed()

_SEND, _RECV = "send", "recv"

#: (role, state, direction, message class) -> next state. Bye and Error are handled apart:
#: legal in every state except CLOSED/ERROR, in both directions, and lead to CLOSED.
TRANSITIONS: dict[tuple[Role, State, str, type], State] = {
    # server
    (Role.SERVER, State.AWAIT_HELLO, _RECV, Hello): State.SEND_CHALLENGE,
    (Role.SERVER, State.SEND_CHALLENGE, _SEND, Challenge): State.AWAIT_AUTH,
    (Role.SERVER, State.AWAIT_AUTH, _RECV, Auth): State.AUTHENTICATING,
    (Role.SERVER, State.AUTHENTICATING, _SEND, Welcome): State.READY,
    (Role.SERVER, State.READY, _SEND, RoundStart): State.READY,
    (Role.SERVER, State.READY, _RECV, Gradient): State.READY,
    (Role.SERVER, State.READY, _RECV, Digest): State.READY,
    (Role.SERVER, State.READY, _SEND, PayloadRequest): State.READY,
    (Role.SERVER, State.READY, _RECV, Payload): State.READY,  # only if requested
    # client
    (Role.CLIENT, State.SEND_HELLO, _SEND, Hello): State.AWAIT_CHALLENGE,
    (Role.CLIENT, State.AWAIT_CHALLENGE, _RECV, Challenge): State.SEND_AUTH,
    (Role.CLIENT, State.SEND_AUTH, _SEND, Auth): State.AWAIT_WELCOME,
    (Role.CLIENT, State.AWAIT_WELCOME, _RECV, Welcome): State.READY,
    (Role.CLIENT, State.READY, _RECV, RoundStart): State.READY,
    (Role.CLIENT, State.READY, _SEND, Gradient): State.READY,
    (Role.CLIENT, State.READY, _SEND, Digest): State.READY,
    (Role.CLIENT, State.READY, _RECV, PayloadRequest): State.READY,
    (Role.CLIENT, State.READY, _SEND, Payload): State.READY,  # only if requested
}
#: Default bound on outstanding PayloadRequests per connection (``--max-outstanding-requests``
#: on both ends). An honest pair never has more than one: the PS asks a worker at most once per
#: attempt and only after its digest, which the worker sends after answering any earlier
#: request. More mean a worker that does not answer (the PS forgets its oldest requests: a late
#: answer to one is then a violation) or a PS flooding requests (the worker forgets them: it
#: answers only requests still recorded). Each entry is one (round, attempt) pair.
MAX_OUTSTANDING_REQUESTS = 16
#: Largest value accepted for the bound (keeps each request O(log n) + a short list shift).
MAX_OUTSTANDING_REQUESTS_CAP = 4096


def check_outstanding_requests(value: object, flag: str = "--max-outstanding-requests") -> int:
    """``value`` as a bound on outstanding requests, 1 .. MAX_OUTSTANDING_REQUESTS_CAP.

    Raises
    ------
    ConfigError
        Not an int, or out of range (the message names ``flag``).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag} must be an integer, got {value!r}")
    if not 1 <= value <= MAX_OUTSTANDING_REQUESTS_CAP:
        raise ConfigError(f"{flag} must be in [1, {MAX_OUTSTANDING_REQUESTS_CAP}], got {value}")
    return int(value)


_TERMINAL_MESSAGES = (Bye, Error)
_INITIAL = {Role.SERVER: State.AWAIT_HELLO, Role.CLIENT: State.SEND_HELLO}


class Connection:
    """One peer's protocol state: a frame decoder, the state machine and byte counters.

    Parameters
    ----------
    role : Role
        ``Role.SERVER`` on the parameter server, ``Role.CLIENT`` on a worker.
    limits : Limits
        Frame limits from ``READY`` on (before that: ``limits.pre_auth()``, no tensors).
    allocate : Allocate, optional
        The frame decoder's ``allocate`` hook (e.g. the server's ``ArrayPool``): where
        received tensors land. Never reached before ``READY`` (no tensors are accepted).
    max_outstanding_requests : int
        Bound on ``requested`` (1 .. MAX_OUTSTANDING_REQUESTS_CAP; ConfigError otherwise):
        beyond it the oldest request is forgotten (``requests_forgotten`` counts them).

    Attributes
    ----------
    role : Role
    state : State
    limits : Limits
        Assignable; takes effect from the next frame prefix parsed.
    worker_id : int or None
        The id from the Hello sent (client) or received (server); not yet authenticated on
        the server until the shell verified the Auth.
    nonce : bytes or None
        The Challenge nonce sent (server) or received (client).
    bytes_received, bytes_sent : int
        Bytes fed in / produced by :meth:`send`, for metrics.
    last_round_start : tuple[int, int]
        (round, attempt) of the newest RoundStart sent (server) / received (client);
        ``(-1, -1)`` before the first.
    last_answered : tuple[int, int]
        (round, attempt) of the newest Gradient or Digest received (server) / sent (client).
        The round rules (``_check_answer``): answers come in increasing (round, attempt)
        order, at most up to ``last_round_start``; anything else is a protocol error.
    requested : list of (int, int)
        (round, attempt) of the PayloadRequests sent (server) / received (client) and not yet
        answered, oldest first; at most ``max_outstanding_requests``.
    requests_forgotten : int
        Requests dropped from ``requested`` because it was full.
    """

    def __init__(
        self,
        role: Role,
        limits: Limits | None = None,
        allocate: Allocate | None = None,
        *,
        max_outstanding_requests: int = MAX_OUTSTANDING_REQUESTS,
    ) -> None:
        if not isinstance(role, Role):
            raise LocalProtocolError(f"role must be a Role, got {role!r}")
        self.role = role
        self.state = _INITIAL[role]
        self._limits = limits if limits is not None else Limits()
        self._decoder = FrameDecoder(self._limits.pre_auth(), allocate)
        self.worker_id: int | None = None
        self.nonce: bytes | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self._error: ProtocolError | None = None  # the error that killed the connection
        self._error_sent = False
        self.last_round_start: tuple[int, int] = (-1, -1)
        self.last_answered: tuple[int, int] = (-1, -1)
        self.requested: list[tuple[int, int]] = []
        self.max_outstanding_requests = check_outstanding_requests(
            max_outstanding_requests, "max_outstanding_requests"
        )
        self.requests_forgotten = 0

    # -- limits --------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, value: Limits) -> None:
        if not isinstance(value, Limits):
            raise LocalProtocolError(f"limits must be a Limits, got {type(value).__name__}")
        self._limits = value
        self._sync_limits()

    def _sync_limits(self) -> None:
        ready = self.state is State.READY
        self._decoder.limits = self._limits if ready else self._limits.pre_auth()

    def is_requested(self, round_index: int, attempt: int) -> bool:
        """(round, attempt) is an outstanding request: a ``Payload`` for it is legal now."""
        key = (round_index, attempt)
        i = bisect.bisect_left(self.requested, key)
        return i < len(self.requested) and self.requested[i] == key

    # -- receiving -----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the transport; ``b""`` means the peer closed its side (EOF).

        Bytes arriving after the connection is CLOSED are ignored (e.g. a Gradient that
        crossed our Bye).
        """
        if self.state is State.CLOSED:
            return
        self.bytes_received += len(data)
        self._decoder.receive_data(data)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """``BufferedProtocol.get_buffer``: tensor bytes land straight in their final array."""
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        """``BufferedProtocol.buffer_updated``: ``nbytes`` were written into the last buffer."""
        self.bytes_received += nbytes
        if self.state is State.CLOSED:
            # Keep the decoder consistent but never surface what follows.
            self._decoder.buffer_updated(nbytes)
            return
        self._decoder.buffer_updated(nbytes)

    @property
    def mid_frame_body(self) -> bool:
        """True when :meth:`next_event` would certainly return ``NEED_DATA``: a frame's tensor
        bytes are still arriving. The shells skip the event pump after such a read (the
        parameter server reads a payload in up to thousands of chunks)."""
        return self.state is not State.CLOSED and self._error is None and self._decoder.mid_body

    def next_event(self) -> Message | NeedData | Closed:
        """The next received message, ``NEED_DATA`` or ``CLOSED``.

        Raises
        ------
        RemoteProtocolError
            Malformed, over-limit or out-of-order input (``VersionMismatchError`` for another
            protocol version). The connection is then dead: the only call still allowed is
            one ``send(Error(...))``.
        """
        if self.state is State.CLOSED:
            return CLOSED
        self._check_alive()
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                if self._decoder.eof:
                    self.state = State.CLOSED  # EOF between frames (mid-frame EOF raised above)
                    return CLOSED
                return NEED_DATA
            msg = from_wire(frame.header, frame.tensors)
            self._transition(_RECV, msg, RemoteProtocolError)
        except RemoteProtocolError as exc:
            self._die(exc)
            raise
        return msg

    # -- sending -------------------------------------------------------------------------

    def send(self, msg: Message) -> list[bytes | memoryview]:
        """Encode ``msg`` for ``transport.writelines`` and advance the state.

        Tensor chunks are views of the message's arrays: do not mutate them until the
        transport flushed them. In state ``ERROR`` exactly one ``Error`` may still be sent.

        Raises
        ------
        LocalProtocolError
            ``msg`` is not legal in the current state (the connection is then dead).
        """
        if self.state is State.ERROR and isinstance(msg, Error) and not self._error_sent:
            self._error_sent = True
            chunks = self._encode(msg)
            self.state = State.CLOSED
            return chunks
        if self.state is State.CLOSED:
            raise LocalProtocolError(f"cannot send {type(msg).__name__}: the connection is closed")
        self._check_alive()
        try:
            chunks = self._encode(msg)
            self._transition(_SEND, msg, LocalProtocolError)
        except LocalProtocolError as exc:
            self._die(exc)
            raise
        return chunks

    def _encode(self, msg: Message) -> list[bytes | memoryview]:
        header, tensors = to_wire(msg)
        chunks = encode_frame(header, tensors)
        self.bytes_sent += sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
        return chunks

    # -- state machine -------------------------------------------------------------------

    def _transition(self, direction: str, msg: Message, error: type[ProtocolError]) -> None:
        """Apply the table; raise ``error`` (Local/Remote) if ``msg`` is illegal now."""
        if isinstance(msg, _TERMINAL_MESSAGES):
            self.state = State.CLOSED
            return
        new_state = TRANSITIONS.get((self.role, self.state, direction, type(msg)))
        if new_state is None:
            verb = "send" if direction == _SEND else "receive"
            raise error(
                f"{self.role.value} cannot {verb} {type(msg).__name__} in state {self.state.value}"
            )
        if isinstance(msg, RoundStart):
            self.last_round_start = max(self.last_round_start, (msg.round_index, msg.attempt))
        elif isinstance(msg, Gradient | Digest):
            self._check_answer(msg, error)
        elif isinstance(msg, PayloadRequest):
            key = (msg.round_index, msg.attempt)
            i = bisect.bisect_left(self.requested, key)
            if i == len(self.requested) or self.requested[i] != key:
                self.requested.insert(i, key)
                # Bounded: a peer that never answers (or floods requests) cannot grow it.
                excess = len(self.requested) - self.max_outstanding_requests
                if excess > 0:
                    del self.requested[:excess]
                    self.requests_forgotten += excess
        elif isinstance(msg, Payload):
            key = (msg.round_index, msg.attempt)
            if not self.is_requested(*key):
                raise error(
                    f"Payload for round {msg.round_index} attempt {msg.attempt} was not "
                    "requested (unsolicited or duplicate)"
                )
            # Retire it and every older request (answers come in request order).
            del self.requested[: bisect.bisect_right(self.requested, key)]
        elif isinstance(msg, Hello):
            if msg.protocol_version != PROTOCOL_VERSION:
                raise (VersionMismatchError if direction == _RECV else LocalProtocolError)(
                    f"Hello announces protocol version {msg.protocol_version}, "
                    f"this side speaks version {PROTOCOL_VERSION}"
                )
            self.worker_id = msg.worker_id
        elif isinstance(msg, Challenge):
            self.nonce = msg.nonce
        self.state = new_state
        self._sync_limits()

    def _check_answer(self, msg: Gradient | Digest, error: type[ProtocolError]) -> None:
        """The round rules: one answer (Gradient or Digest) per RoundStart, in order, none for
        a (round, attempt) never started on this connection. A late answer to an older
        RoundStart that was not answered yet is legal (the PS drops it if its round closed)."""
        key = (msg.round_index, msg.attempt)
        if key > self.last_round_start:
            raise error(
                f"payload for round {msg.round_index} attempt {msg.attempt}, never started "
                "for it on this connection"
            )
        if key <= self.last_answered:
            raise error(
                f"second or out-of-order payload for round {msg.round_index} attempt "
                f"{msg.attempt} (last answered: round {self.last_answered[0]} attempt "
                f"{self.last_answered[1]})"
            )
        self.last_answered = key

    def _check_alive(self) -> None:
        if self._error is not None:
            raise type(self._error)(
                f"the connection is unusable after an earlier protocol error: {self._error}"
            )

    def _die(self, exc: ProtocolError) -> None:
        self._error = exc
        self.state = State.ERROR
