"""Connection state machines: the full flow, byte by byte, illegal transitions, pre-auth limits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.errors import ConfigError, LocalProtocolError, RemoteProtocolError, VersionMismatchError
from draco.net.frames import MAGIC, PREFIX, PROTOCOL_VERSION, Limits, encode_frame
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
    to_wire,
)
from draco.net.protocol import (
    CLOSED,
    MAX_OUTSTANDING_REQUESTS,
    NEED_DATA,
    Closed,
    Connection,
    NeedData,
    Role,
    State,
)

NONCE = bytes(range(32))
MAC = b"\x07" * 32
PARAMS = np.linspace(-1, 1, 50, dtype=np.float32)
PAYLOAD = (PARAMS + 1j).astype(np.complex64)


def wire(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def raw(msg: Message) -> bytes:
    """Frame bytes of ``msg`` without any state machine (for illegal sends)."""
    return wire(encode_frame(*to_wire(msg)))


def deliver(sender: Connection, receiver: Connection, msg: Message, step: int = 0) -> Message:
    data = wire(sender.send(msg))
    event: Message | NeedData | Closed
    if step:
        event = NEED_DATA
        for i in range(0, len(data), step):
            assert event is NEED_DATA
            receiver.receive_data(data[i : i + step])
            event = receiver.next_event()
    else:
        receiver.receive_data(data)
        event = receiver.next_event()
    assert not isinstance(event, NeedData | Closed), event
    after = CLOSED if isinstance(event, Bye | Error) else NEED_DATA
    assert receiver.next_event() is after
    return event


def in_round(t: int = 0) -> tuple[Connection, Connection]:
    """A handshake, then RoundStart(t): the client may answer round t (the round rules)."""
    server, client = handshake()
    deliver(server, client, RoundStart(t, PARAMS, None, 0))
    return server, client


def handshake(step: int = 0, **kw: Any) -> tuple[Connection, Connection]:
    server = Connection(Role.SERVER, Limits(), **kw)
    client = Connection(Role.CLIENT, Limits(), **kw)
    assert (server.state, client.state) == (State.AWAIT_HELLO, State.SEND_HELLO)
    assert deliver(client, server, Hello(PROTOCOL_VERSION, 3), step) == Hello(PROTOCOL_VERSION, 3)
    assert (server.state, client.state) == (State.SEND_CHALLENGE, State.AWAIT_CHALLENGE)
    assert server.worker_id == 3 and client.worker_id == 3
    assert deliver(server, client, Challenge(NONCE), step) == Challenge(NONCE)
    assert (server.state, client.state) == (State.AWAIT_AUTH, State.SEND_AUTH)
    assert server.nonce == client.nonce == NONCE
    assert deliver(client, server, Auth(MAC), step) == Auth(MAC)
    assert (server.state, client.state) == (State.AUTHENTICATING, State.AWAIT_WELCOME)
    assert deliver(server, client, Welcome({"dim": 50}), step) == Welcome({"dim": 50})
    assert server.state is client.state is State.READY
    return server, client


@pytest.mark.parametrize("step", [0, 1, 5])
def test_full_flow(step: int) -> None:
    server, client = handshake(step)
    for t in range(3):
        rs = RoundStart(t, PARAMS, "reverse" if t == 1 else None, t)
        assert deliver(server, client, rs, step) == rs
        g = Gradient(t, PAYLOAD, 0.1)
        assert deliver(client, server, g, step) == g
    assert deliver(server, client, Bye("run complete"), step) == Bye("run complete")
    assert server.state is client.state is State.CLOSED
    assert client.next_event() is CLOSED
    assert server.bytes_sent == client.bytes_received > 3 * PARAMS.nbytes
    assert client.bytes_sent == server.bytes_received > 3 * PAYLOAD.nbytes


def test_buffered_protocol_path() -> None:
    server, client = in_round()
    data = wire(client.send(Gradient(0, PAYLOAD, 0.0)))
    pos = 0
    while pos < len(data):
        buf = server.get_buffer(-1)
        n = min(len(buf), len(data) - pos, 33)
        buf[:n] = data[pos : pos + n]
        server.buffer_updated(n)
        pos += n
    event = server.next_event()
    assert isinstance(event, Gradient)
    np.testing.assert_array_equal(event.payload, PAYLOAD)


def test_server_refuses_tensor_bytes_before_authentication() -> None:
    server = Connection(Role.SERVER, Limits())
    server.receive_data(raw(Hello(PROTOCOL_VERSION, 1)))
    assert isinstance(server.next_event(), Hello)
    # Only the prefix is needed to refuse: nothing gets allocated for the declared bytes.
    server.receive_data(PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 20, 4 * 10**6, 1))
    with pytest.raises(RemoteProtocolError, match="authentication"):
        server.next_event()


def test_allocate_hook_is_never_reached_before_authentication() -> None:
    """A hostile pre-auth frame declaring tensors is refused from its prefix, no allocation."""
    calls: list[tuple[np.dtype, tuple[int, ...]]] = []

    def allocate(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        calls.append((dtype, shape))
        return np.empty(shape, dtype)

    server = Connection(Role.SERVER, Limits(), allocate)
    server.receive_data(raw(Hello(PROTOCOL_VERSION, 1)))
    assert isinstance(server.next_event(), Hello)
    server.receive_data(raw(Gradient(0, PAYLOAD, 0.0)))
    with pytest.raises(RemoteProtocolError, match="authentication"):
        server.next_event()
    assert calls == []


def test_allocate_hook_receives_payloads_after_authentication() -> None:
    target = np.full(PAYLOAD.shape, np.nan, PAYLOAD.dtype)
    calls = []

    def allocate(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        calls.append((dtype, shape))
        return target

    server, client = in_round()
    server._decoder._allocate = allocate  # the hook Connection(..., allocate) installs
    event = deliver(client, server, Gradient(0, PAYLOAD, 0.0))
    assert isinstance(event, Gradient) and event.payload is target
    assert calls == [(PAYLOAD.dtype, PAYLOAD.shape)]
    np.testing.assert_array_equal(target, PAYLOAD)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**6])
def test_mid_frame_body_means_next_event_needs_data(chunk: int) -> None:
    """The shells skip the event pump while ``mid_frame_body``: it must never hide an event."""
    server, client = in_round()
    # Larger than the decoder's 4 KiB read between frames, so some read ends inside the body.
    data = wire(client.send(Gradient(0, np.tile(PAYLOAD, 40), 0.0)))
    seen_mid = False
    events = []
    pos = 0
    while pos < len(data):
        buf = server.get_buffer(-1)
        n = min(len(buf), chunk, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        pos += n
        server.buffer_updated(n)
        if server.mid_frame_body:
            seen_mid = True
            assert server.next_event() is NEED_DATA
        else:
            while not isinstance(ev := server.next_event(), NeedData):
                events.append(ev)
    assert seen_mid  # some read ended inside the body: the skip was exercised
    assert len(events) == 1 and isinstance(events[0], Gradient)
    assert not server.mid_frame_body
    # EOF in the middle of a body: not "mid body" any more, the error must surface.
    server.receive_data(data[: len(data) - 4])
    assert server.mid_frame_body
    server.receive_data(b"")
    assert not server.mid_frame_body
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        server.next_event()


def test_gradient_sent_too_early_is_refused_before_parsing() -> None:
    server = Connection(Role.SERVER, Limits())
    server.receive_data(raw(Gradient(0, PAYLOAD, 0.0)))
    with pytest.raises(RemoteProtocolError, match="authentication"):
        server.next_event()


def test_limits_replaced_after_ready_apply() -> None:
    server, _ = handshake()
    server.limits = Limits(max_tensor_bytes=PAYLOAD.nbytes - 1)
    server.receive_data(raw(Gradient(0, PAYLOAD, 0.0)))
    with pytest.raises(RemoteProtocolError, match="max_tensor_bytes"):
        server.next_event()


def test_client_accepts_welcome_and_round_start_in_one_read() -> None:
    """The RoundStart is parsed with post-auth limits although it arrived with the Welcome."""
    server = Connection(Role.SERVER, Limits())
    client = Connection(Role.CLIENT, Limits())
    server.receive_data(wire(client.send(Hello(PROTOCOL_VERSION, 0))))
    server.next_event()
    client.receive_data(wire(server.send(Challenge(NONCE))))
    client.next_event()
    server.receive_data(wire(client.send(Auth(MAC))))
    server.next_event()
    client.receive_data(
        wire(server.send(Welcome({}))) + wire(server.send(RoundStart(0, PARAMS, None, 0)))
    )
    assert isinstance(client.next_event(), Welcome)
    assert isinstance(client.next_event(), RoundStart)


# -- illegal transitions -------------------------------------------------------------------

SERVER_RECV_ILLEGAL = {
    State.AWAIT_HELLO: [
        Auth(MAC),
        Gradient(0, PAYLOAD, 0.0),
        Challenge(NONCE),
        Welcome({}),
        Digest(0, 0, b"d" * 32, 0.0),
        Payload(0, 0, PARAMS),
    ],
    State.AWAIT_AUTH: [Hello(PROTOCOL_VERSION, 1), Challenge(NONCE)],
    State.READY: [Hello(PROTOCOL_VERSION, 1), Auth(MAC), RoundStart(0, PARAMS, None, 0)],
}


def server_in(state: State) -> Connection:
    server = Connection(Role.SERVER, Limits())
    if state is State.AWAIT_HELLO:
        return server
    server.receive_data(raw(Hello(PROTOCOL_VERSION, 1)))
    server.next_event()
    server.send(Challenge(NONCE))
    if state is State.AWAIT_AUTH:
        return server
    server.receive_data(raw(Auth(MAC)))
    server.next_event()
    server.send(Welcome({}))
    assert server.state is State.READY
    return server


def client_in(state: State) -> Connection:
    client = Connection(Role.CLIENT, Limits())
    if state is State.SEND_HELLO:
        return client
    client.send(Hello(PROTOCOL_VERSION, 1))
    if state is State.AWAIT_CHALLENGE:
        return client
    client.receive_data(raw(Challenge(NONCE)))
    client.next_event()
    if state is State.SEND_AUTH:
        return client
    client.send(Auth(MAC))
    if state is State.AWAIT_WELCOME:
        return client
    client.receive_data(raw(Welcome({})))
    client.next_event()
    assert client.state is State.READY
    return client


@pytest.mark.parametrize(
    ("state", "msg"),
    [(s, m) for s, ms in SERVER_RECV_ILLEGAL.items() for m in ms],
    ids=lambda x: getattr(x, "value", type(x).__name__),
)
def test_server_receiving_out_of_order_is_a_remote_error(state: State, msg: Message) -> None:
    server = server_in(state)
    server.receive_data(raw(msg))
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    assert server.state is State.ERROR


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (State.AWAIT_HELLO, Challenge(NONCE)),
        (State.AWAIT_HELLO, Welcome({})),
        (State.AWAIT_AUTH, Welcome({})),
        (State.AWAIT_AUTH, RoundStart(0, PARAMS, None, 0)),
        (State.READY, Challenge(NONCE)),
        (State.READY, Gradient(0, PAYLOAD, 0.0)),
    ],
    ids=str,
)
def test_server_sending_out_of_order_is_a_local_error(state: State, msg: Message) -> None:
    server = server_in(state)
    with pytest.raises(LocalProtocolError):
        server.send(msg)
    with pytest.raises(LocalProtocolError, match="earlier protocol error"):
        server.send(Bye("x"))


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (State.SEND_HELLO, Challenge(NONCE)),
        (State.AWAIT_CHALLENGE, Welcome({})),
        (State.AWAIT_WELCOME, Challenge(NONCE)),
        (State.READY, Welcome({})),
        (State.READY, Hello(PROTOCOL_VERSION, 1)),
    ],
    ids=str,
)
def test_client_receiving_out_of_order_is_a_remote_error(state: State, msg: Message) -> None:
    client = client_in(state)
    client.receive_data(raw(msg))
    with pytest.raises(RemoteProtocolError):
        client.next_event()


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (State.SEND_HELLO, Auth(MAC)),
        (State.AWAIT_CHALLENGE, Auth(MAC)),
        (State.SEND_AUTH, Hello(PROTOCOL_VERSION, 1)),
        (State.AWAIT_WELCOME, Gradient(0, PAYLOAD, 0.0)),
        (State.READY, RoundStart(0, PARAMS, None, 0)),
    ],
    ids=str,
)
def test_client_sending_out_of_order_is_a_local_error(state: State, msg: Message) -> None:
    client = client_in(state)
    with pytest.raises(LocalProtocolError):
        client.send(msg)


@pytest.mark.parametrize("state", [State.AWAIT_HELLO, State.AWAIT_AUTH, State.READY])
@pytest.mark.parametrize("msg", [Bye("stop"), Error("shutdown", "server stopping")])
def test_bye_and_error_close_from_any_open_state(state: State, msg: Message) -> None:
    server = server_in(state)
    server.receive_data(raw(msg))
    assert server.next_event() == msg
    assert server.state is State.CLOSED
    assert server.next_event() is CLOSED
    server.receive_data(raw(Gradient(0, PAYLOAD, 0.0)))  # crossed our close: ignored
    assert server.next_event() is CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        server.send(Bye("again"))


def test_hello_with_another_version_is_a_version_mismatch() -> None:
    server = Connection(Role.SERVER, Limits())
    server.receive_data(raw(Hello(PROTOCOL_VERSION + 1, 0)))
    with pytest.raises(VersionMismatchError, match="version"):
        server.next_event()


def test_one_error_may_be_sent_after_a_remote_error() -> None:
    server = Connection(Role.SERVER, Limits())
    client = Connection(Role.CLIENT, Limits())
    server.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    with pytest.raises(RemoteProtocolError, match="earlier protocol error"):
        server.next_event()
    with pytest.raises(RemoteProtocolError):
        server.send(Bye("nope"))
    # The client (which sent Hello) learns why.
    client.send(Hello(PROTOCOL_VERSION, 0))
    client.receive_data(wire(server.send(Error("protocol_error", "bad magic"))))
    assert server.state is State.CLOSED
    assert client.next_event() == Error("protocol_error", "bad magic")
    with pytest.raises(LocalProtocolError):
        server.send(Error("protocol_error", "twice"))


def test_eof_between_frames_is_closed_and_mid_frame_is_an_error() -> None:
    server, client = handshake()
    data = wire(server.send(RoundStart(0, PARAMS, None, 0)))
    server.receive_data(b"")
    assert server.next_event() is CLOSED
    assert server.state is State.CLOSED
    client.receive_data(data[:-1])
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        client.next_event()


def test_bad_limits_type_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER, Limits()).limits = {"max_tensors": 1}  # type: ignore[assignment]
    with pytest.raises(LocalProtocolError):
        Connection("server", Limits())  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([1, 16, 1000]))
def test_random_bytes_into_a_server(data: bytes, step: int) -> None:
    """Hostile bytes: only RemoteProtocolError, NEED_DATA or CLOSED -- never another error."""
    server = Connection(Role.SERVER, Limits())
    prefix = raw(Hello(PROTOCOL_VERSION, 9)) if data[:1] == b"\x00" else b""
    stream = prefix + data
    try:
        for i in range(0, len(stream), step):
            server.receive_data(stream[i : i + step])
            while (event := server.next_event()) is not NEED_DATA:
                assert event is CLOSED or isinstance(event, Hello)
                if event is CLOSED:
                    break
        server.receive_data(b"")
        assert server.next_event() is CLOSED
    except RemoteProtocolError:
        assert server.state is State.ERROR


# -- digest-first vote: Digest, PayloadRequest, Payload ------------------------------------

KEY = b"\x42" * 32
DIGEST = b"\x11" * 32


@pytest.mark.parametrize("step", [0, 1, 7])
def test_digest_round_flow(step: int) -> None:
    """RoundStart(key) -> Digest -> PayloadRequest -> Payload, fed byte by byte."""
    server, client = handshake(step)
    for t in range(2):
        rs = RoundStart(t, PARAMS, None, 0, attempt=1, digest_key=KEY)
        assert deliver(server, client, rs, step) == rs
        d = Digest(t, 1, DIGEST, 0.25)
        assert deliver(client, server, d, step) == d
        req = PayloadRequest(t, 1)
        assert deliver(server, client, req, step) == req
        assert server.requested == client.requested == [(t, 1)]
        pay = Payload(t, 1, PARAMS)
        assert deliver(client, server, pay, step) == pay
        assert server.requested == client.requested == []
    assert server.state is client.state is State.READY


@pytest.mark.parametrize("step", [0, 1])
def test_unsolicited_payload_is_a_remote_error(step: int) -> None:
    server, _ = handshake()
    data = raw(Payload(0, 0, PARAMS))
    with pytest.raises(RemoteProtocolError, match="not requested"):
        for i in range(0, len(data), step or len(data)):
            server.receive_data(data[i : i + (step or len(data))])
            assert server.next_event() is NEED_DATA
    assert server.state is State.ERROR


def test_duplicate_payload_is_a_remote_error() -> None:
    server, client = handshake()
    deliver(server, client, PayloadRequest(3, 0))
    deliver(client, server, Payload(3, 0, PARAMS))
    server.receive_data(raw(Payload(3, 0, PARAMS)))  # the same answer again
    with pytest.raises(RemoteProtocolError, match="unsolicited or duplicate"):
        server.next_event()


def test_payload_for_another_attempt_than_requested_is_a_remote_error() -> None:
    server, client = handshake()
    deliver(server, client, PayloadRequest(3, 1))
    server.receive_data(raw(Payload(3, 0, PARAMS)))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_an_answer_retires_older_requests() -> None:
    """A worker may skip a request a newer round made useless; answering the newer one
    retires the older, which can then no longer be answered."""
    server, client = handshake()
    deliver(server, client, PayloadRequest(1, 0))
    deliver(server, client, PayloadRequest(2, 0))
    deliver(client, server, Payload(2, 0, PARAMS))
    assert server.requested == client.requested == []
    server.receive_data(raw(Payload(1, 0, PARAMS)))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_outstanding_requests_are_bounded() -> None:
    server, client = handshake()
    for t in range(MAX_OUTSTANDING_REQUESTS + 5):
        deliver(server, client, PayloadRequest(t, 0))
    assert len(server.requested) == len(client.requested) == MAX_OUTSTANDING_REQUESTS
    assert server.requested[0] == (5, 0)  # the oldest were forgotten
    server.receive_data(raw(Payload(0, 0, PARAMS)))  # forgotten: no longer answerable
    with pytest.raises(RemoteProtocolError):
        server.next_event()


@pytest.mark.parametrize("cap", [1, 3])
def test_the_outstanding_request_bound_is_configurable(cap: int) -> None:
    """A PS flooding requests (or a worker never answering them): both ends keep the newest
    ``cap``, count what they forgot, and only a remembered request may be answered."""
    server, client = handshake(max_outstanding_requests=cap)
    flood = [(t, a) for t in range(50) for a in range(2)][::-1]  # newest first: worst order
    for t, a in flood:
        deliver(server, client, PayloadRequest(t, a))
        deliver(server, client, PayloadRequest(t, a))  # a repeated request is kept once
    newest = sorted(flood)[-cap:]
    assert server.requested == client.requested == newest
    # Newest first: every request older than the first ``cap`` is forgotten as it comes,
    # its repeat too (a forgotten key is a new request again).
    assert server.requests_forgotten == client.requests_forgotten == 2 * (len(flood) - cap)
    assert client.is_requested(*newest[0]) and not client.is_requested(0, 0)
    # The oldest remembered request may be answered (and only it is retired) ...
    assert deliver(client, server, Payload(*newest[0], PARAMS)) == Payload(*newest[0], PARAMS)
    assert server.requested == client.requested == newest[1:]
    # ... a forgotten one may not: the worker cannot send it, the PS refuses it.
    with pytest.raises(LocalProtocolError, match="not requested"):
        client.send(Payload(0, 0, PARAMS))
    server.receive_data(raw(Payload(0, 0, PARAMS)))
    with pytest.raises(RemoteProtocolError, match="not requested"):
        server.next_event()


@pytest.mark.parametrize("bad", [0, -1, 4097, True, 2.0, "16", None])
def test_a_bad_outstanding_request_bound_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_outstanding_requests"):
        Connection(Role.CLIENT, max_outstanding_requests=bad)


def test_client_cannot_send_an_unrequested_payload() -> None:
    _, client = handshake()
    with pytest.raises(LocalProtocolError, match="not requested"):
        client.send(Payload(0, 0, PARAMS))


@pytest.mark.parametrize(
    "msg", [Digest(0, 0, DIGEST, 0.0), Payload(0, 0, PARAMS), PayloadRequest(0, 0)]
)
def test_digest_messages_before_ready_are_remote_errors(msg: Message) -> None:
    """Before authentication: Payload carries a tensor (refused on its prefix), the others
    are out of order."""
    server = server_in(State.AWAIT_AUTH)
    server.receive_data(raw(msg))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


def test_server_cannot_receive_a_payload_request() -> None:
    server, _ = handshake()
    server.receive_data(raw(PayloadRequest(0, 0)))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


@pytest.mark.parametrize("n", [0, 15, 65])
def test_digest_of_a_bad_length_is_a_remote_error(n: int) -> None:
    server, _ = handshake()
    header, tensors = to_wire(Digest(0, 0, DIGEST, 0.0))
    header["digest"] = b"x" * n
    server.receive_data(wire(encode_frame(header, tensors)))
    with pytest.raises(RemoteProtocolError, match="digest"):
        server.next_event()


# ----------------------------------------------------------------------------- round rules


def test_answers_follow_the_round_starts_in_order() -> None:
    """One answer per RoundStart, in order; a late answer to an unanswered older RoundStart
    is legal (the PS drops it if its round closed)."""
    server, client = handshake()
    deliver(server, client, RoundStart(3, PARAMS, None, 0))
    deliver(server, client, RoundStart(3, PARAMS, None, 0, attempt=1))
    assert server.last_round_start == client.last_round_start == (3, 1)
    deliver(client, server, Gradient(3, PAYLOAD, 0.1))  # the late answer to attempt 0
    deliver(client, server, Digest(3, 1, DIGEST, 0.1))
    assert server.last_answered == client.last_answered == (3, 1)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (Gradient(3, PAYLOAD, 0.1), "second or out-of-order"),  # the same attempt twice
        (Gradient(4, PAYLOAD, 0.1), "never started"),  # a future round
        (Digest(3, 1, DIGEST, 0.1), "never started"),  # an attempt never started
    ],
)
@pytest.mark.parametrize("step", [0, 1])
def test_round_rules_are_remote_errors_on_the_server(
    answer: Message, match: str, step: int
) -> None:
    server, client = handshake()
    deliver(server, client, RoundStart(3, PARAMS, None, 0))
    deliver(client, server, Gradient(3, PAYLOAD, 0.1))
    data = raw(answer)
    with pytest.raises(RemoteProtocolError, match=match):
        for i in range(0, len(data), step or len(data)):
            server.receive_data(data[i : i + (step or len(data))])
            assert server.next_event() is NEED_DATA
    assert server.state is State.ERROR


def test_an_older_answer_after_a_newer_one_is_a_remote_error() -> None:
    server, client = handshake()
    deliver(server, client, RoundStart(1, PARAMS, None, 0))
    deliver(server, client, RoundStart(2, PARAMS, None, 0))
    deliver(client, server, Gradient(2, PAYLOAD, 0.1))
    server.receive_data(raw(Gradient(1, PAYLOAD, 0.1)))  # skipped, then answered: out of order
    with pytest.raises(RemoteProtocolError, match="out-of-order"):
        server.next_event()


def test_client_cannot_answer_a_round_it_was_not_sent() -> None:
    _, client = handshake()
    with pytest.raises(LocalProtocolError, match="never started"):
        client.send(Gradient(0, PAYLOAD, 0.1))
