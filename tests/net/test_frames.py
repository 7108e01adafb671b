"""Frame encoder/decoder: round trips under every split, zero-copy path, hostile bytes."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from draco.errors import (
    ConfigError,
    LocalProtocolError,
    RemoteProtocolError,
    VersionMismatchError,
)
from draco.net.frames import (
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    ArrayPool,
    Frame,
    FrameDecoder,
    Limits,
    encode_frame,
)

# -- helpers -------------------------------------------------------------------------------


def join(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def raw_frame(
    header: Any,
    body: bytes = b"",
    *,
    version: int = PROTOCOL_VERSION,
    flags: int = 0,
    n_tensors: int | None = None,
    tensor_bytes: int | None = None,
    packed: bytes | None = None,
) -> bytes:
    """A frame built by hand, so every field can be wrong."""
    if packed is None:
        packed = msgpack.packb(header, use_bin_type=True)
    if n_tensors is None:
        tensors = header.get("tensors") if isinstance(header, dict) else None
        n_tensors = len(tensors) if isinstance(tensors, list) else 0
    if tensor_bytes is None:
        tensor_bytes = len(body)
    return PREFIX.pack(MAGIC, version, flags, len(packed), tensor_bytes, n_tensors) + packed + body


def desc(dtype: str, shape: Any, nbytes: Any = None) -> dict[str, Any]:
    if nbytes is None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return {"dtype": dtype, "shape": shape, "nbytes": nbytes}


def decode_all(data: bytes, limits: Limits | None = None, splits: list[int] | None = None):
    """Feed ``data`` in pieces (receive_data path), then EOF; return all frames."""
    dec = FrameDecoder(limits or Limits())
    frames: list[Frame] = []
    pos = 0
    for size in splits or [len(data)]:
        if pos >= len(data):
            break
        dec.receive_data(data[pos : pos + size])
        pos += size
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    if pos < len(data):
        dec.receive_data(data[pos:])
    dec.receive_data(b"")
    while (f := dec.next_frame()) is not None:
        frames.append(f)
    return frames


def decode_buffered(
    data: bytes, read_sizes: list[int], limits: Limits | None = None, pool: Any = None
):
    """Feed ``data`` through get_buffer/buffer_updated like a BufferedProtocol + recv_into."""
    dec = FrameDecoder(limits or Limits(), allocate=pool)
    frames: list[Frame] = []
    pos, i = 0, 0
    while pos < len(data):
        buf = dec.get_buffer(-1)
        n = min(len(buf), len(data) - pos, read_sizes[i % len(read_sizes)])
        i += 1
        buf[:n] = data[pos : pos + n]
        pos += n
        dec.buffer_updated(n)
        while (f := dec.next_frame()) is not None:
            frames.append(f)
    dec.receive_data(b"")
    assert dec.next_frame() is None
    return frames


def expect_remote(data: bytes, limits: Limits | None = None, match: str | None = None) -> None:
    dec = FrameDecoder(limits or Limits())
    dec.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        while dec.next_frame() is not None:
            pass
        dec.receive_data(b"")
        dec.next_frame()


def sample_tensors(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.standard_normal(37).astype(np.float32),
        (rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))).astype(np.complex64),
        rng.standard_normal((2, 2, 2)).astype(np.complex128),
        rng.integers(0, 255, size=5, dtype=np.uint8),
    ]


# -- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_header_bytes": 0},
        {"max_header_bytes": 2**32},
        {"max_tensor_bytes": -1},
        {"max_tensors": -1},
        {"max_ndim": 0},
        {"max_ndim": 33},
        {"max_tensors": 1.5},
        {"max_tensors": True},
    ],
)
def test_limits_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Limits(**kwargs)


def test_pre_auth_limits_allow_no_tensors() -> None:
    pre = Limits(max_header_bytes=100).pre_auth()
    assert (pre.max_tensor_bytes, pre.max_tensors, pre.max_header_bytes) == (0, 0, 100)


# -- encoder -------------------------------------------------------------------------------


def test_prefix_layout_is_as_documented() -> None:
    arr = np.arange(3, dtype=np.float32)
    chunks = encode_frame({"type": "x"}, [arr])
    head = bytes(chunks[0])
    assert head[0:4] == b"DRCO"
    assert int.from_bytes(head[4:6], "big") == PROTOCOL_VERSION
    assert int.from_bytes(head[6:8], "big") == 0
    header_len = int.from_bytes(head[8:12], "big")
    assert int.from_bytes(head[12:20], "big") == 12
    assert int.from_bytes(head[20:24], "big") == 1
    assert len(head) == PREFIX_SIZE + header_len
    header = msgpack.unpackb(head[24:], raw=False)
    assert header == {"type": "x", "tensors": [{"dtype": "<f4", "shape": [3], "nbytes": 12}]}


def test_encoder_does_not_copy_contiguous_tensors() -> None:
    arr = np.arange(1000, dtype=np.float32)
    chunks = encode_frame({"type": "x"}, [arr])
    assert isinstance(chunks[1], memoryview)
    assert np.shares_memory(np.frombuffer(chunks[1], dtype=np.uint8), arr)


def test_encoder_handles_strided_and_big_endian_tensors() -> None:
    base = np.arange(20, dtype=np.float64)
    strided = base[::2]
    big = np.arange(4, dtype=">f4")
    (frame,) = decode_all(join(encode_frame({"type": "x"}, [strided, big])))
    np.testing.assert_array_equal(frame.tensors[0], strided)
    np.testing.assert_array_equal(frame.tensors[1], big.astype("<f4"))
    assert frame.tensors[1].dtype.str == "<f4"


@pytest.mark.parametrize(
    ("header", "tensors", "match"),
    [
        ({"tensors": 1}, [], "reserved"),
        ({"type": object()}, [], "msgpack"),
        ([1, 2], [], "mapping"),
        ({"type": "x"}, [np.zeros(2, dtype=np.float16)], "dtype"),
        ({"type": "x"}, [np.zeros(2, dtype=object)], "dtype"),
        ({"type": "x"}, [[1.0, 2.0]], "ndarray"),
    ],
)
def test_encoder_refuses_bad_input(header: Any, tensors: list[Any], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_frame(header, tensors)


# -- decoder: round trips ------------------------------------------------------------------


def test_round_trip_whole_and_byte_by_byte() -> None:
    rng = np.random.default_rng(0)
    tensors = sample_tensors(rng)
    data = join(encode_frame({"type": "x", "k": [1, "a", b"\x00"]}, tensors))
    data += join(encode_frame({"type": "y"}))
    for splits in (None, [1] * len(data)):
        frames = decode_all(data, splits=splits)
        assert [f.header for f in frames] == [{"type": "x", "k": [1, "a", b"\x00"]}, {"type": "y"}]
        for got, want in zip(frames[0].tensors, tensors, strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            assert got.flags.writeable and got.flags.c_contiguous
        assert frames[1].tensors == ()
        assert frames[0].wire_bytes + frames[1].wire_bytes == len(data)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_round_trip_random_splits(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    tensors = sample_tensors(np.random.default_rng(seed))
    stream = join(encode_frame({"type": "a"}, tensors[:2])) + join(
        encode_frame({"type": "b", "n": seed}, tensors[2:])
    )
    splits = data.draw(st.lists(st.integers(1, 200), min_size=1, max_size=60))
    frames = decode_all(stream, splits=splits)
    assert [f.header["type"] for f in frames] == ["a", "b"]
    for got, want in zip(frames[0].tensors + frames[1].tensors, tensors, strict=True):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_round_trip_buffered_protocol_path(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    tensors = sample_tensors(np.random.default_rng(seed))
    stream = join(encode_frame({"type": "a"}, tensors)) * 2 + join(encode_frame({"type": "b"}))
    reads = data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=20))
    frames = decode_buffered(stream, reads)
    assert [f.header["type"] for f in frames] == ["a", "a", "b"]
    for frame in frames[:2]:
        for got, want in zip(frame.tensors, tensors, strict=True):
            np.testing.assert_array_equal(got, want)


def test_get_buffer_lends_the_final_array_during_a_body() -> None:
    arr = np.arange(10_000, dtype=np.float32)
    head, body = encode_frame({"type": "x"}, [arr])
    dec = FrameDecoder(Limits())
    # Between frames a read may take the prefix, a usual header and the first body bytes.
    assert len(dec.get_buffer(65536)) == 4096
    dec.buffer_updated(0)
    dec.receive_data(bytes(head))
    view = dec.get_buffer(65536)
    assert len(view) == arr.nbytes
    view[:] = bytes(body)
    lent = np.frombuffer(view, dtype=np.uint8)
    dec.buffer_updated(arr.nbytes)
    frame = dec.next_frame()
    assert frame is not None
    assert np.shares_memory(frame.tensors[0], lent)
    np.testing.assert_array_equal(frame.tensors[0], arr)


def test_get_buffer_header_read_stops_at_the_header() -> None:
    head = bytes(encode_frame({"type": "x", "pad": "y" * 100}, [np.zeros(4, np.float32)])[0])
    dec = FrameDecoder(Limits())
    buf = dec.get_buffer(-1)
    buf[:PREFIX_SIZE] = head[:PREFIX_SIZE]
    dec.buffer_updated(PREFIX_SIZE)
    assert len(dec.get_buffer(-1)) == len(head) - PREFIX_SIZE


@pytest.mark.parametrize("read", [1, 7, 24, 4095, 4096, 10**6])
def test_buffered_reads_of_any_size_around_the_read_ahead(read: int) -> None:
    """Reads that take everything lent (the 4 KiB read between frames included), byte by
    byte, or cut at the prefix: small frames several to a read, a header longer than the
    read-ahead, and body bytes of a frame in the read that carried its header."""
    rng = np.random.default_rng(read)
    big = rng.standard_normal(5000).astype(np.float32)  # 20 KB: the body outlives the read
    tensors = sample_tensors(rng)
    stream = b"".join(
        [
            join(encode_frame({"type": "small"})),
            join(encode_frame({"type": "big"}, [big])),
            join(encode_frame({"type": "long", "pad": "p" * 6000}, tensors)),  # 6 KB header
            join(encode_frame({"type": "small"})),
            join(encode_frame({"type": "big"}, [big])),
        ]
    )
    frames = decode_buffered(stream, [read], pool=ArrayPool(10**6))
    assert [f.header["type"] for f in frames] == ["small", "big", "long", "small", "big"]
    np.testing.assert_array_equal(frames[1].tensors[0], big)
    np.testing.assert_array_equal(frames[4].tensors[0], big)
    for got, want in zip(frames[2].tensors, tensors, strict=True):
        np.testing.assert_array_equal(got, want)
    assert frames[2].header["pad"] == "p" * 6000
    assert sum(f.wire_bytes for f in frames) == len(stream)


def test_limits_apply_to_a_frame_read_ahead_with_the_one_before() -> None:
    """The read between frames may carry the next frame too: its declarations are checked
    against the limits in force when it is parsed (after the first frame was taken), and a
    frame over them is refused whole, on the buffered path as on receive_data."""
    first = join(encode_frame({"type": "a"}))
    second = join(encode_frame({"type": "b"}, [np.ones(3, np.float32)]))
    dec = FrameDecoder(Limits().pre_auth())
    buf = dec.get_buffer(-1)
    assert len(buf) >= len(first + second)
    buf[: len(first + second)] = first + second
    dec.buffer_updated(len(first + second))
    frame = dec.next_frame()
    assert frame is not None and frame.header == {"type": "a"}
    with pytest.raises(RemoteProtocolError, match="before authentication"):
        dec.next_frame()  # still pre-auth limits: no tensor bytes at all


def test_buffered_read_ahead_refuses_an_oversized_declaration_before_allocating() -> None:
    allocations: list[tuple[int, ...]] = []

    def allocate(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        allocations.append(shape)
        return np.empty(shape, dtype)

    data = join(encode_frame({"type": "x"}, [np.ones(100, np.float32)]))
    dec = FrameDecoder(Limits(max_tensor_bytes=399), allocate=allocate)
    buf = dec.get_buffer(-1)
    buf[: len(data)] = data  # the whole frame in one read-ahead
    dec.buffer_updated(len(data))
    with pytest.raises(RemoteProtocolError, match="max_tensor_bytes"):
        dec.next_frame()
    assert allocations == []


# -- the allocate hook and ArrayPool ---------------------------------------------------------


def _address(arr: np.ndarray) -> int:
    return int(arr.__array_interface__["data"][0])


def test_array_pool_hands_out_an_array_again_only_when_nothing_refers_to_it() -> None:
    pool = ArrayPool(10**6)
    f4 = np.dtype("<f4")
    a = pool(f4, (100,))
    first = _address(a)
    view = a[10:20]  # a view keeps its owner alive ...
    memview = memoryview(a)  # ... and so does a buffer export
    del a
    b = pool(f4, (100,))
    assert _address(b) != first  # still in use through the view and the memoryview
    del view
    c = pool(f4, (100,))
    assert _address(c) not in (first, _address(b))
    memview.release()
    del memview
    d = pool(f4, (100,))
    assert _address(d) == first  # nothing refers to it any more: reused
    assert (pool.allocated, pool.reused) == (3, 1)
    # Another dtype or shape never gets it.
    del d
    assert _address(pool(np.dtype("<f8"), (50,))) != first
    assert _address(pool(f4, (50, 2))) != first


def test_array_pool_keeps_at_most_max_bytes() -> None:
    pool = ArrayPool(1000)
    held = [pool(np.dtype("<f4"), (100,)) for _ in range(5)]  # 400 bytes each
    assert pool.kept_bytes == 800 and pool.allocated == 5
    addresses = {_address(a) for a in held}
    del held
    again = [pool(np.dtype("<f4"), (100,)) for _ in range(5)]
    # Only the two kept arrays come back; the other three are new (and not kept).
    assert pool.reused == 2 and pool.kept_bytes == 800
    assert len({_address(a) for a in again[:2]} & addresses) == 2
    assert ArrayPool(0)(np.dtype("<f4"), (10,)).shape == (10,)
    with pytest.raises(ConfigError):
        ArrayPool(-1)


def test_array_pool_hands_arrays_out_in_turn_and_skips_one_in_use() -> None:
    pool = ArrayPool(10**6)
    f4 = np.dtype("<f4")
    held = [pool(f4, (10,)) for _ in range(3)]
    addresses = [_address(a) for a in held]
    del held
    # Free again: handed out in turn, starting after the last one given (the first).
    a = pool(f4, (10,))
    b = pool(f4, (10,))
    assert [_address(a), _address(b)] == addresses[:2]
    # Next in turn is the third; the first is still held, so after the third comes a new one.
    c = pool(f4, (10,))
    d = pool(f4, (10,))
    assert _address(c) == addresses[2] and _address(d) not in addresses
    del b
    # The search wraps around past the held first array to the free second one.
    e = pool(f4, (10,))
    assert _address(e) == addresses[1] and _address(a) == addresses[0]
    assert pool.reused == 4


def test_pooled_decoder_never_overwrites_a_frame_still_in_use() -> None:
    """Frames into pooled arrays: a frame kept alive keeps its bytes; a dropped one's memory
    receives the next frame, and a frame cut off by EOF never surfaces its stale bytes."""
    pool = ArrayPool(10**6)
    a, b, c = (np.arange(1000, dtype=np.float32) * k for k in (1, 2, 3))
    dec = FrameDecoder(Limits(), allocate=pool)
    dec.receive_data(join(encode_frame({"type": "x"}, [a])))
    kept = dec.next_frame()
    assert kept is not None
    dec.receive_data(join(encode_frame({"type": "x"}, [b])))
    second = dec.next_frame()
    assert second is not None
    assert not np.shares_memory(kept.tensors[0], second.tensors[0])
    np.testing.assert_array_equal(kept.tensors[0], a)
    np.testing.assert_array_equal(second.tensors[0], b)
    memory = _address(second.tensors[0])
    del second
    data = join(encode_frame({"type": "x"}, [c]))
    dec.receive_data(data[:-8])  # all but the last two values: into the reused memory
    assert dec.next_frame() is None and pool.reused == 1
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        dec.next_frame()
    # A fresh decoder on the same pool: complete frame, same memory, exactly its bytes.
    dec = FrameDecoder(Limits(), allocate=pool)
    (frame,) = decode_buffered(join(encode_frame({"type": "x"}, [c])), [333], pool=pool)
    np.testing.assert_array_equal(frame.tensors[0], c)
    assert _address(frame.tensors[0]) == memory
    np.testing.assert_array_equal(kept.tensors[0], a)


def test_over_limit_frame_never_reaches_the_allocate_hook() -> None:
    calls = []

    def allocate(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        calls.append(shape)
        return np.empty(shape, dtype)

    big = join(encode_frame({"type": "x"}, [np.zeros(1000, np.float32)]))
    dec = FrameDecoder(Limits(max_tensor_bytes=3999), allocate=allocate)
    dec.receive_data(big)
    with pytest.raises(RemoteProtocolError, match="max_tensor_bytes"):
        dec.next_frame()
    # Zero-size tensors are not the hook's business either.
    dec = FrameDecoder(Limits(), allocate=allocate)
    dec.receive_data(join(encode_frame({"type": "x"}, [np.zeros((0, 3), np.float32)])))
    assert dec.next_frame() is not None and calls == []


@pytest.mark.parametrize(
    "bad",
    [
        lambda dtype, shape: np.empty(shape, np.float64),  # wrong dtype
        lambda dtype, shape: np.empty((shape[0] + 1,), dtype),  # wrong shape
        lambda dtype, shape: np.empty((shape[0], 2), dtype)[:, 0],  # not contiguous
        lambda dtype, shape: np.broadcast_to(np.zeros(1, dtype), shape),  # read-only
        lambda dtype, shape: bytearray(4 * shape[0]),  # not an array
    ],
)
def test_a_wrong_allocate_hook_is_a_local_error_not_a_wrong_receive(bad: Any) -> None:
    dec = FrameDecoder(Limits(), allocate=bad)
    with pytest.raises(LocalProtocolError, match="allocate"):  # raised where it is called
        dec.receive_data(join(encode_frame({"type": "x"}, [np.ones(10, np.float32)])))
        dec.next_frame()
    with pytest.raises(LocalProtocolError, match="callable"):
        FrameDecoder(Limits(), allocate=42)  # type: ignore[arg-type]


def test_limits_apply_to_the_frame_after_the_one_taken() -> None:
    """Two frames arrive in one read; raising the limits in between admits the second."""
    first = join(encode_frame({"type": "a"}))
    second = join(encode_frame({"type": "b"}, [np.ones(3, np.float32)]))
    dec = FrameDecoder(Limits().pre_auth())
    dec.receive_data(first + second)
    frame = dec.next_frame()
    assert frame is not None and frame.header == {"type": "a"}
    dec.limits = Limits()
    frame = dec.next_frame()
    assert frame is not None and frame.header == {"type": "b"}


def test_zero_size_tensor_round_trips() -> None:
    (frame,) = decode_all(join(encode_frame({"type": "x"}, [np.zeros((0, 3), np.float32)])))
    assert frame.tensors[0].shape == (0, 3)


# -- decoder: hostile bytes ----------------------------------------------------------------


def test_bad_magic_fails_on_the_first_byte() -> None:
    dec = FrameDecoder(Limits())
    dec.receive_data(b"X")
    with pytest.raises(RemoteProtocolError, match="magic"):
        dec.next_frame()


def test_tls_bytes_get_a_hint() -> None:
    expect_remote(b"\x16\x03\x01\x02\x00", match="TLS")


def test_version_mismatch_names_both_versions() -> None:
    data = raw_frame({"type": "hello", "tensors": []}, version=PROTOCOL_VERSION + 1)
    dec = FrameDecoder(Limits())
    dec.receive_data(data[:6])  # magic + version suffice
    with pytest.raises(VersionMismatchError) as info:
        dec.next_frame()
    assert f"version {PROTOCOL_VERSION + 1}" in str(info.value)
    assert f"version {PROTOCOL_VERSION}" in str(info.value)
    assert isinstance(info.value, RemoteProtocolError)


def test_huge_declared_tensor_fails_on_the_prefix_alone() -> None:
    prefix = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 10, 2**60, 1)
    dec = FrameDecoder(Limits())
    dec.receive_data(prefix)
    with pytest.raises(RemoteProtocolError, match="tensor bytes"):
        dec.next_frame()


def test_over_limit_declaration_allocates_nothing() -> None:
    limits = Limits(max_tensor_bytes=1024)
    header = {"type": "x", "tensors": [desc("|u1", [64 * 2**20])]}
    data = raw_frame(header, tensor_bytes=64 * 2**20)
    tracemalloc.start()
    try:
        dec = FrameDecoder(limits)
        dec.receive_data(data)
        with pytest.raises(RemoteProtocolError, match="limit"):
            dec.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_descriptor_lying_about_a_huge_shape_allocates_nothing() -> None:
    """Prefix within limits, descriptor shape enormous: refused before np.empty."""
    header = {"type": "x", "tensors": [desc("<f8", [2**40, 2**20], 8)]}
    expect_remote(raw_frame(header, b"\x00" * 8), match="shape")


@pytest.mark.parametrize(
    ("data", "limits", "match"),
    [
        (raw_frame({"type": "x", "tensors": []}, flags=1), None, "flags"),
        (raw_frame({}, packed=b""), None, "empty header"),
        (raw_frame({"type": "x" * 200, "tensors": []}), Limits(max_header_bytes=64), "header"),
        (
            raw_frame({"type": "x", "tensors": [desc("<f4", [1])] * 5}, b"\x00" * 20),
            None,
            "5 tensors",
        ),
        (
            raw_frame({"type": "x", "tensors": [desc("<f4", [2])]}, b"\x00" * 8),
            Limits().pre_auth(),
            "authentication",
        ),
        (raw_frame({"type": "x", "tensors": []}, n_tensors=0, tensor_bytes=8), None, "0 tensors"),
    ],
)
def test_bad_prefix(data: bytes, limits: Limits | None, match: str) -> None:
    expect_remote(data, limits, match)


@pytest.mark.parametrize(
    ("header", "body", "match", "kwargs"),
    [
        (None, b"", "msgpack", {"packed": b"\xc1"}),  # never-used msgpack byte
        (None, b"", "msgpack", {"packed": b"\x92\x01"}),  # truncated array
        (None, b"", "msgpack", {"packed": msgpack.packb({"tensors": []}) + b"\x01"}),  # extra
        (None, b"", "msgpack", {"packed": msgpack.packb({1: 2, "tensors": []})}),  # int key
        (None, b"", "msgpack", {"packed": msgpack.packb(msgpack.ExtType(1, b"x"))}),
        (None, b"", "msgpack", {"packed": b"\x91" * 5000 + b"\xc0"}),  # deep nesting
        ([1, 2], b"", "map", {}),
        ({"type": "x"}, b"", "tensors", {}),
        ({"type": "x", "tensors": 3}, b"", "tensors", {}),
        ({"type": "x", "tensors": [desc("<f4", [1])]}, b"\x00" * 4, "describes", {"n_tensors": 2}),
        ({"type": "x", "tensors": [[1, 2]]}, b"\x00" * 4, "descriptor 0", {"n_tensors": 1}),
        ({"type": "x", "tensors": [{**desc("<f4", [1]), "x": 1}]}, b"\x00" * 4, "keys", {}),
        ({"type": "x", "tensors": [desc("<f2", [2], 4)]}, b"\x00" * 4, "dtype", {}),
        ({"type": "x", "tensors": [desc(">f4", [1], 4)]}, b"\x00" * 4, "dtype", {}),
        ({"type": "x", "tensors": [desc("|O", [1], 8)]}, b"\x00" * 8, "dtype", {}),
        ({"type": "x", "tensors": [desc("<f4", [1] * 5, 4)]}, b"\x00" * 4, "shape", {}),
        ({"type": "x", "tensors": [desc("<f4", [-1], 4)]}, b"\x00" * 4, "shape", {}),
        ({"type": "x", "tensors": [desc("<f4", [True], 4)]}, b"\x00" * 4, "shape", {}),
        ({"type": "x", "tensors": [desc("<f4", [1.0], 4)]}, b"\x00" * 4, "shape", {}),
        ({"type": "x", "tensors": [desc("<f4", 4, 4)]}, b"\x00" * 4, "shape", {}),
        ({"type": "x", "tensors": [desc("<f4", [2], 4)]}, b"\x00" * 4, "nbytes|descriptor", {}),
        ({"type": "x", "tensors": [desc("<f4", [1], "4")]}, b"\x00" * 4, "nbytes", {}),
        ({"type": "x", "tensors": [desc("<f4", [1])]}, b"\x00" * 8, "sum", {}),
    ],
)
def test_bad_header(header: Any, body: bytes, match: str, kwargs: dict[str, Any]) -> None:
    expect_remote(raw_frame(header, body, **kwargs), None, match)


@pytest.mark.parametrize("cut", [3, 10, PREFIX_SIZE + 2, -1])
def test_eof_mid_frame_is_a_remote_error(cut: int) -> None:
    data = join(encode_frame({"type": "x"}, [np.ones(4, np.float32)]))
    dec = FrameDecoder(Limits())
    dec.receive_data(data[:cut])
    assert dec.next_frame() is None
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        dec.next_frame()


def test_clean_eof_between_frames() -> None:
    dec = FrameDecoder(Limits())
    dec.receive_data(join(encode_frame({"type": "x"})))
    dec.receive_data(b"")
    assert dec.next_frame() is not None
    assert dec.next_frame() is None
    assert dec.eof and dec.idle


def test_decoder_stays_dead_after_an_error() -> None:
    good = join(encode_frame({"type": "ok"}))
    dec = FrameDecoder(Limits())
    dec.receive_data(good + b"garbage" + good)
    frame = dec.next_frame()
    assert frame is not None and frame.header == {"type": "ok"}  # frames before it survive
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()
    dec.receive_data(good)  # discarded, no exception from feeding
    with pytest.raises(RemoteProtocolError, match="already failed"):
        dec.next_frame()


def test_caller_misuse_is_a_local_error() -> None:
    dec = FrameDecoder(Limits())
    with pytest.raises(LocalProtocolError):
        dec.buffer_updated(1)
    lent = len(dec.get_buffer(-1))
    with pytest.raises(LocalProtocolError):
        dec.buffer_updated(lent + 1)
    dec.receive_data(b"")
    dec.receive_data(b"")  # EOF twice is harmless
    with pytest.raises(LocalProtocolError):
        dec.receive_data(b"x")


# -- fuzz ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([1, 7, 64, 1000]))
def test_random_bytes_only_raise_remote_errors(data: bytes, step: int) -> None:
    dec = FrameDecoder(Limits(max_tensor_bytes=4096))
    try:
        for i in range(0, len(data), step):
            dec.receive_data(data[i : i + step])
            while dec.next_frame() is not None:
                pass
        dec.receive_data(b"")
        while dec.next_frame() is not None:
            pass
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_only_raise_remote_errors(data: st.DataObject) -> None:
    """A valid frame with random bytes overwritten: a frame, NEED_DATA or a remote error."""
    frame = bytearray(
        join(encode_frame({"type": "g", "r": 3}, [np.arange(6, dtype=np.complex64).reshape(2, 3)]))
    )
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] = data.draw(st.integers(0, 255))
    reads = data.draw(st.lists(st.integers(1, 50), min_size=1, max_size=5))
    with contextlib.suppress(RemoteProtocolError):
        decode_buffered(bytes(frame), reads, Limits(max_tensor_bytes=10_000))


def test_golden_bytes_of_the_documented_example() -> None:
    """The example frame in docs/protocol.md, byte for byte."""
    chunks = encode_frame(
        {"type": "gradient", "round_index": 7, "compute_seconds": 0.5, "attempt": 1},
        [np.array([1 + 2j, 3 - 4j], dtype=np.complex64)],
    )
    head = bytes(chunks[0])
    assert head[:24].hex() == "4452434f0003000000000062000000000000001000000001"
    assert head[24:].startswith(b"\x85\xa4type\xa8gradient\xabround_index\x07\xafcompute_seconds")
    assert b"\xa7attempt\x01\xa7tensors" in head
    assert bytes(chunks[1]) == np.array([1, 2, 3, -4], dtype="<f4").tobytes()
