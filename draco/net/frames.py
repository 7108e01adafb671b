"""Sans-IO framing: bytes in, frames out; frames in, byte chunks out. No asyncio, no sockets.

A frame (full spec with byte offsets in ``docs/protocol.md``)::

    prefix   24 bytes, network byte order, struct "!4sHHIQI":
             magic b"DRCO" | version u16 | flags u16 (0) | header_len u32 |
             tensor_bytes u64 | n_tensors u32
    header   header_len bytes: one msgpack map {"type": str, <fields>..., "tensors": [desc...]}
             desc = {"dtype": "<f4", "shape": [d, ...], "nbytes": int}
    tensors  tensor_bytes raw bytes: the tensors' C-order bytes, back to back, in desc order

Every declared length is checked against :class:`Limits` before anything is allocated or
read; the tensor bytes then land straight in their final, preallocated ``numpy`` arrays (the
``get_buffer``/``buffer_updated`` path of ``asyncio.BufferedProtocol``), so the parameter
server's ingest loop copies each payload byte at most once (zero times on that path). Those
arrays come from the decoder's ``allocate`` hook: ``np.empty`` by default, an
:class:`ArrayPool` on the parameter server, so a round's payloads land in the memory the
previous round's payloads used (already mapped: no page faults, no ``malloc`` search).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from draco.errors import ConfigError, LocalProtocolError, RemoteProtocolError, VersionMismatchError

__all__ = [
    "DTYPES",
    "MAGIC",
    "PREFIX",
    "PREFIX_SIZE",
    "PROTOCOL_VERSION",
    "Allocate",
    "ArrayPool",
    "Frame",
    "FrameDecoder",
    "Limits",
    "encode_frame",
]

#: The first four bytes of every frame.
MAGIC = b"DRCO"
#: The version this code speaks. Bumped on any incompatible change; magic + version (the first
#: six bytes) keep this position in every future version so a mismatch is always reported.
#: Version 2 added ``attempt`` to ``round_start`` and ``gradient`` (retried rounds); a
#: version-1 peer would refuse those keys, so it is told "version mismatch" instead.
PROTOCOL_VERSION = 3
#: magic, version, flags, header_len, tensor_bytes, n_tensors (network byte order).
PREFIX = struct.Struct("!4sHHIQI")
PREFIX_SIZE = PREFIX.size  # 24
#: Tensor dtypes accepted on the wire (numpy ``dtype.str``; little-endian only).
DTYPES: frozenset[str] = frozenset({"<f4", "<f8", "<c8", "<c16", "<i8", "|u1"})
#: The header key the frame layer reserves for the tensor descriptors.
TENSORS_KEY = "tensors"

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
# numpy's own bound on ndim; the wire never allows more whatever the limits say.
_NDIM_CAP = 32
# Size of the scratch buffer lent to the BufferedProtocol path outside tensor bodies.
_SCRATCH_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may declare in one frame; checked before any allocation.

    Parameters
    ----------
    max_header_bytes : int
        Largest msgpack header accepted, bytes (1 .. 2**32-1). Default 64 KiB.
    max_tensor_bytes : int
        Largest total of tensor bytes in one frame, bytes (>= 0). Default 256 MiB (a float32
        vector of 67M parameters, or complex128 of 16.7M).
    max_tensors : int
        Most tensors in one frame (>= 0). Default 4.
    max_ndim : int
        Most dimensions of one tensor (1 .. 32). Default 4.

    Raises
    ------
    ConfigError
        A bound is not an int or out of range.
    """

    max_header_bytes: int = 64 * 1024
    max_tensor_bytes: int = 256 * 1024 * 1024
    max_tensors: int = 4
    max_ndim: int = 4

    def __post_init__(self) -> None:
        ranges = {
            "max_header_bytes": (1, _U32_MAX),
            "max_tensor_bytes": (0, _U64_MAX),
            "max_tensors": (0, _U32_MAX),
            "max_ndim": (1, _NDIM_CAP),
        }
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"Limits.{name} must be an int, got {value!r}")
            if not lo <= value <= hi:
                raise ConfigError(f"Limits.{name} must be in [{lo}, {hi}], got {value}")

    def pre_auth(self) -> Limits:
        """The same limits with no tensor bytes at all (used before authentication)."""
        if self.max_tensor_bytes == 0 and self.max_tensors == 0:
            return self  # already so (the server's handshake limits): no copy per connection
        return dataclasses.replace(self, max_tensor_bytes=0, max_tensors=0)


#: ``allocate(dtype, shape)`` -> a C-contiguous, writeable array of exactly that dtype and
#: shape whose contents may be anything (the decoder overwrites every byte before the frame
#: is surfaced). Called only after the frame's declarations passed the :class:`Limits`.
Allocate = Callable[[np.dtype, tuple[int, ...]], np.ndarray]


def _new_array(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


class ArrayPool:
    """Receive buffers reused across frames: an ``allocate`` hook for :class:`FrameDecoder`.

    Why: the parameter server receives n payloads of the same dtype and shape every round. A
    fresh ``np.empty`` per payload is a ``malloc`` of several MB whose pages, unless the
    allocator happens to hand back the same memory, are faulted in and zeroed by the kernel
    on first touch -- work on the event loop of the order of the copy itself. The pool keeps
    the arrays it handed out and gives one back out again once nothing else refers to it.

    An array counts as free when the pool holds the only reference to it (CPython reference
    count). Every numpy view, ``memoryview`` or ``torch.from_numpy`` tensor of it holds a
    reference to it (numpy views point at the owning array), so an array still in use by a
    round, a decode or a late consumer is never handed out twice; only code that keeps a raw
    pointer without a Python reference could be fooled, and the project has none. Use it
    from one thread (the event loop); other threads may drop references meanwhile.

    Parameters
    ----------
    max_bytes : int
        Most bytes the pool keeps (>= 0). Requests beyond it are plain ``np.empty`` arrays
        that are not kept. Zero-size and larger-than-``max_bytes`` requests are never kept.

    Attributes
    ----------
    reused, allocated : int
        Requests served from the pool / by a new array (kept or not), for tests and metrics.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"ArrayPool max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        self.reused = 0
        self.allocated = 0
        self._free_refs = 0
        self._arrays: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        # The reference count a kept array shows in _take when nothing else holds it:
        # measured on a probe through the same code path, not assumed per interpreter.
        probe = [np.empty(1)]
        self._free_refs = self._refs_in_take(probe)

    @staticmethod
    def _refs_in_take(arrays: list[np.ndarray]) -> int:
        for arr in arrays:
            return sys.getrefcount(arr)
        raise AssertionError("unreachable: probe list is not empty")

    def _take(self, arrays: list[np.ndarray]) -> np.ndarray | None:
        for arr in arrays:
            if sys.getrefcount(arr) <= self._free_refs:
                return arr
        return None

    def __call__(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """An array of ``dtype`` and ``shape`` (contents undefined): a free kept one if any."""
        dtype = np.dtype(dtype)
        key = (dtype.str, tuple(shape))
        arrays = self._arrays.get(key)
        if arrays is not None:
            arr = self._take(arrays)
            if arr is not None:
                self.reused += 1
                return arr
        self.allocated += 1
        arr = np.empty(shape, dtype=dtype)
        if 0 < arr.nbytes <= self.max_bytes - self.kept_bytes:
            self._arrays.setdefault(key, []).append(arr)
            self.kept_bytes += arr.nbytes
        return arr

    def clear(self) -> None:
        """Forget every kept array (the memory is freed once their other users let go)."""
        self._arrays.clear()
        self.kept_bytes = 0


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame.

    Attributes
    ----------
    header : dict[str, Any]
        The msgpack header map without the ``"tensors"`` key.
    tensors : tuple[np.ndarray, ...]
        Writeable, C-contiguous arrays with the declared dtype and shape, in wire order.
    wire_bytes : int
        Size of the frame on the wire (prefix + header + tensor bytes), for byte counters.
    """

    header: dict[str, Any]
    tensors: tuple[np.ndarray, ...]
    wire_bytes: int


def encode_frame(
    header: Mapping[str, Any], tensors: Sequence[np.ndarray] = ()
) -> list[bytes | memoryview]:
    """Encode one frame as chunks for ``transport.writelines`` (tensor bytes are not copied).

    Parameters
    ----------
    header : Mapping[str, Any]
        msgpack-able map with str keys; must not contain ``"tensors"``.
    tensors : Sequence[np.ndarray]
        Arrays with a dtype in :data:`DTYPES` (big-endian arrays are converted). C-contiguous
        arrays are sent as ``memoryview`` s of their own memory: do NOT mutate them until the
        transport has flushed them (``drain()``). Others are copied once into C order.

    Returns
    -------
    list[bytes | memoryview]
        ``[prefix + header, tensor_0_bytes, ...]`` (zero-size tensors contribute no chunk).

    Raises
    ------
    LocalProtocolError
        The header is not a packable str-keyed map, uses the reserved key, or a tensor has a
        dtype outside the whitelist.
    """
    if not isinstance(header, Mapping):
        raise LocalProtocolError(f"frame header must be a mapping, got {type(header).__name__}")
    if TENSORS_KEY in header:
        raise LocalProtocolError(f"frame header key {TENSORS_KEY!r} is reserved for the framing")
    descriptors: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    total = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, np.ndarray):
            raise LocalProtocolError(f"tensor {i} is a {type(tensor).__name__}, not an ndarray")
        if tensor.dtype.byteorder == ">":
            tensor = tensor.astype(tensor.dtype.newbyteorder("<"))
        if tensor.dtype.str not in DTYPES:
            allowed = ", ".join(sorted(DTYPES))
            raise LocalProtocolError(
                f"tensor {i} has dtype {tensor.dtype.str!r}; the wire carries only {allowed}"
            )
        # C order is what the receiver assumes; a copy only for strided/Fortran arrays.
        tensor = np.ascontiguousarray(tensor)
        descriptors.append(
            {"dtype": tensor.dtype.str, "shape": list(tensor.shape), "nbytes": tensor.nbytes}
        )
        if tensor.nbytes:
            chunks.append(tensor.reshape(-1).view(np.uint8).data)
        total += tensor.nbytes
    body = dict(header)
    body[TENSORS_KEY] = descriptors
    try:
        packed = msgpack.packb(body, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"frame header cannot be encoded as msgpack: {exc}") from exc
    if len(packed) > _U32_MAX:
        raise LocalProtocolError(f"frame header of {len(packed)} bytes exceeds the u32 field")
    prefix = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(packed), total, len(descriptors))
    return [prefix + packed, *chunks]


_PREFIX_PHASE, _HEADER_PHASE, _BODY_PHASE = "prefix", "header", "body"
_LENT_NONE, _LENT_SCRATCH, _LENT_TENSOR = 0, 1, 2
_DESCRIPTOR_KEYS = frozenset({"dtype", "shape", "nbytes"})
# First bytes of a TLS record (handshake, version 3.x): a hint when one side forgot --tls-*.
_TLS_RECORD = b"\x16\x03"


class FrameDecoder:
    """Incremental, bounded frame parser (sans-IO).

    Feed it with :meth:`receive_data` (any split of the byte stream, ``b""`` = EOF) or with the
    zero-copy pair :meth:`get_buffer` / :meth:`buffer_updated`; take frames with
    :meth:`next_frame`. It parses at most one frame ahead: bytes after a completed frame wait
    unparsed until that frame is taken, so limits changed in between (after authentication)
    apply to the next frame's declarations.

    Hostile input never raises from the feeding methods: the error is stored and raised as
    :class:`RemoteProtocolError` by :meth:`next_frame` (after any frames completed before it);
    from then on the decoder is dead and discards input.

    Parameters
    ----------
    limits : Limits
        Applied to each frame when its prefix is parsed; the attribute may be replaced.
    allocate : Allocate, optional
        Where a frame's tensors are received into (see :data:`Allocate`); ``np.empty`` by
        default. Called once per non-empty tensor, after the frame's header passed the limits.
    """

    def __init__(self, limits: Limits, allocate: Allocate | None = None) -> None:
        if not isinstance(limits, Limits):
            raise LocalProtocolError(f"limits must be a Limits, got {type(limits).__name__}")
        if allocate is not None and not callable(allocate):
            raise LocalProtocolError(f"allocate must be callable, got {type(allocate).__name__}")
        self.limits = limits
        self._allocate: Allocate = allocate if allocate is not None else _new_array
        self._buf = bytearray()  # received, not yet parsed (prefix/header bytes or backlog)
        self._phase = _PREFIX_PHASE
        self._header_len = 0
        self._tensor_bytes = 0
        self._n_tensors = 0
        self._header: dict[str, Any] = {}
        self._arrays: list[np.ndarray] = []
        self._views: list[memoryview] = []  # flat uint8 views of the non-empty arrays
        self._view_index = 0  # tensor being received
        self._view_fill = 0  # bytes of it received so far
        self._ready: Frame | None = None
        self._error: RemoteProtocolError | None = None
        self._error_raised = False
        self._eof = False
        # Allocated on first use: an idle connection (a flood's) never costs these 64 KB.
        self._scratch: memoryview | None = None
        self._lent = _LENT_NONE
        self._lent_len = 0

    # -- feeding -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (tensor bytes are copied once into their array); ``b""`` = EOF.

        Feeding ``b""`` again is harmless.

        Raises
        ------
        LocalProtocolError
            Data fed after EOF (a bug in the caller).
        """
        if len(data) == 0:
            self._eof = True  # idempotent: eof_received and connection_lost may both report it
            return
        if self._eof:
            raise LocalProtocolError("receive_data called after EOF")
        with memoryview(data) as view:
            self._feed(view.cast("B") if view.format != "B" or view.ndim != 1 else view)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer for the next read (``BufferedProtocol.get_buffer``).

        While a tensor body is being received this is a view into that tensor's final array
        (its remaining bytes); otherwise a scratch buffer sized to the bytes still needed for
        the prefix or header, so reads do not run past them into a tensor body.
        """
        self._process()
        idle_body = self._phase == _BODY_PHASE and not self._buf
        if self._error is None and self._ready is None and idle_body:
            view = self._views[self._view_index][self._view_fill :]
            self._lent, self._lent_len = _LENT_TENSOR, len(view)
            return view
        if self._error is not None or self._ready is not None or self._eof:
            need = _SCRATCH_BYTES  # discarded (dead) or kept as backlog (frame waiting)
        elif self._phase == _PREFIX_PHASE:
            need = PREFIX_SIZE - len(self._buf)
        else:
            need = self._header_len - len(self._buf)
        need = max(1, min(need, _SCRATCH_BYTES))
        self._lent, self._lent_len = _LENT_SCRATCH, need
        if self._scratch is None:
            self._scratch = memoryview(bytearray(_SCRATCH_BYTES))
        return self._scratch[:need]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written into the last buffer from :meth:`get_buffer`.

        Raises
        ------
        LocalProtocolError
            No buffer was lent, or ``nbytes`` exceeds its size (a bug in the caller).
        """
        lent, self._lent = self._lent, _LENT_NONE
        if lent == _LENT_NONE:
            raise LocalProtocolError("buffer_updated called without a preceding get_buffer")
        if not 0 <= nbytes <= self._lent_len:
            raise LocalProtocolError(f"buffer_updated({nbytes}) exceeds the lent buffer")
        if nbytes == 0:
            return
        if lent == _LENT_TENSOR:
            self._advance_body(nbytes)  # the bytes are already in the array
        else:
            assert self._scratch is not None  # lent by get_buffer
            self._feed(self._scratch[:nbytes])

    def _feed(self, data: memoryview) -> None:
        if self._error is not None:
            return  # dead: discard
        pos, end = 0, len(data)
        # Fast path: a tensor body with nothing buffered before it -> straight into the array.
        while pos < end and self._ready is None and self._phase == _BODY_PHASE and not self._buf:
            dst = self._views[self._view_index]
            k = min(end - pos, len(dst) - self._view_fill)
            dst[self._view_fill : self._view_fill + k] = data[pos : pos + k]
            pos += k
            self._advance_body(k)
        if pos < end:
            self._buf += data[pos:]
        self._process()

    def _advance_body(self, nbytes: int) -> None:
        self._view_fill += nbytes
        while self._view_index < len(self._views) and self._view_fill == len(
            self._views[self._view_index]
        ):
            self._view_index += 1
            self._view_fill = 0
        if self._view_index == len(self._views):
            self._complete()

    # -- parsing -------------------------------------------------------------------------

    def _process(self) -> None:
        """Parse buffered bytes until one frame is complete or more bytes are needed."""
        if self._error is not None:
            return
        try:
            while self._ready is None:
                if self._phase == _PREFIX_PHASE:
                    if not self._parse_prefix():
                        return
                elif self._phase == _HEADER_PHASE:
                    if len(self._buf) < self._header_len:
                        return
                    self._parse_header()
                else:
                    if not self._buf:
                        return
                    self._drain_buffer_into_body()
        except RemoteProtocolError as exc:
            self._fail(exc)

    def _parse_prefix(self) -> bool:
        buf = self._buf
        seen = bytes(buf[: len(MAGIC)])
        if seen != MAGIC[: len(seen)]:
            hint = ""
            if seen.startswith(_TLS_RECORD[: len(seen)]) and len(seen) >= 2:
                hint = " (it looks like TLS: enable --tls-* on both sides or on neither)"
            raise RemoteProtocolError(
                f"not a draco frame: bad magic {seen!r}, expected {MAGIC!r}{hint}"
            )
        if len(buf) >= 6:
            # Magic and version keep their offsets in every version: report a mismatch first.
            (version,) = struct.unpack_from("!H", buf, 4)
            if version != PROTOCOL_VERSION:
                raise VersionMismatchError(
                    f"peer speaks draco protocol version {version}, this side speaks version "
                    f"{PROTOCOL_VERSION}; run the same draco release on the server and workers"
                )
        if len(buf) < PREFIX_SIZE:
            return False
        _, _, flags, header_len, tensor_bytes, n_tensors = PREFIX.unpack_from(buf)
        limits = self.limits
        if flags != 0:
            raise RemoteProtocolError(f"frame sets unknown flags 0x{flags:04x}")
        if header_len == 0:
            raise RemoteProtocolError("frame declares an empty header")
        if header_len > limits.max_header_bytes:
            raise RemoteProtocolError(
                f"frame declares a {header_len}-byte header; the limit is "
                f"{limits.max_header_bytes} bytes (max_header_bytes)"
            )
        if (n_tensors or tensor_bytes) and limits.max_tensors == 0:
            raise RemoteProtocolError(
                f"frame declares {n_tensors} tensors ({tensor_bytes} bytes) where no tensor "
                "data is accepted (before authentication)"
            )
        if n_tensors > limits.max_tensors:
            raise RemoteProtocolError(
                f"frame declares {n_tensors} tensors; the limit is {limits.max_tensors}"
            )
        if tensor_bytes > limits.max_tensor_bytes:
            raise RemoteProtocolError(
                f"frame declares {tensor_bytes} tensor bytes; the limit is "
                f"{limits.max_tensor_bytes} bytes (max_tensor_bytes)"
            )
        if n_tensors == 0 and tensor_bytes != 0:
            raise RemoteProtocolError(f"frame declares {tensor_bytes} tensor bytes but 0 tensors")
        self._header_len = header_len
        self._tensor_bytes = tensor_bytes
        self._n_tensors = n_tensors
        del buf[:PREFIX_SIZE]
        self._phase = _HEADER_PHASE
        return True

    def _parse_header(self) -> None:
        raw = bytes(self._buf[: self._header_len])
        del self._buf[: self._header_len]
        try:
            # unpackb bounds every str/bin/array/map length by len(raw) <= max_header_bytes.
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, max_ext_len=0)
        except Exception as exc:  # msgpack raises many types (ValueError, StackError, ...)
            raise RemoteProtocolError(
                f"frame header is not valid msgpack: {type(exc).__name__}: {exc}"
            ) from None
        if not isinstance(obj, dict):
            raise RemoteProtocolError(
                f"frame header must be a msgpack map, got {type(obj).__name__}"
            )
        descriptors = obj.pop(TENSORS_KEY, None)
        if not isinstance(descriptors, list):
            raise RemoteProtocolError(f"frame header lacks the {TENSORS_KEY!r} list")
        if len(descriptors) != self._n_tensors:
            raise RemoteProtocolError(
                f"frame prefix declares {self._n_tensors} tensors, header describes "
                f"{len(descriptors)}"
            )
        specs = [self._parse_descriptor(i, d) for i, d in enumerate(descriptors)]
        declared = sum(nbytes for _, _, nbytes in specs)
        if declared != self._tensor_bytes:
            raise RemoteProtocolError(
                f"tensor descriptors sum to {declared} bytes, the prefix declares "
                f"{self._tensor_bytes}"
            )
        # Every length is now checked against the limits: allocation is bounded.
        self._header = obj
        self._arrays = [self._receive_array(np.dtype(dtype), shape) for dtype, shape, _ in specs]
        self._views = [a.reshape(-1).view(np.uint8).data for a in self._arrays if a.nbytes]
        self._view_index = self._view_fill = 0
        self._phase = _BODY_PHASE
        if not self._views:
            self._complete()

    def _receive_array(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if math.prod(shape) == 0:
            return np.empty(shape, dtype=dtype)  # no bytes to receive: never the hook's business
        arr = self._allocate(dtype, shape)
        ok = isinstance(arr, np.ndarray) and arr.dtype == dtype and arr.shape == shape
        if not (ok and arr.flags.c_contiguous and arr.flags.writeable):
            # A bug in the hook, not the peer's fault: never receive into the wrong memory.
            raise LocalProtocolError(
                f"allocate({dtype.str}, {shape}) returned {type(arr).__name__} "
                f"{getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}: expected a "
                "C-contiguous writeable array of exactly that dtype and shape"
            )
        return arr

    def _parse_descriptor(self, i: int, desc: Any) -> tuple[str, tuple[int, ...], int]:
        if not isinstance(desc, dict) or set(desc) != _DESCRIPTOR_KEYS:
            raise RemoteProtocolError(
                f"tensor descriptor {i} must be a map with keys dtype, shape, nbytes"
            )
        dtype, shape, nbytes = desc["dtype"], desc["shape"], desc["nbytes"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            allowed = ", ".join(sorted(DTYPES))
            raise RemoteProtocolError(f"tensor {i} has dtype {dtype!r}; allowed: {allowed}")
        if not isinstance(shape, list) or len(shape) > self.limits.max_ndim:
            raise RemoteProtocolError(
                f"tensor {i} shape must be a list of at most {self.limits.max_ndim} sizes"
            )
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise RemoteProtocolError(f"tensor {i} shape {shape!r} has a non-size entry")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise RemoteProtocolError(f"tensor {i} nbytes must be an int, got {nbytes!r}")
        expected = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow
        if expected != nbytes:
            raise RemoteProtocolError(
                f"tensor {i}: shape {shape} x itemsize of {dtype} = {expected} bytes, "
                f"descriptor says {nbytes}"
            )
        if nbytes > self._tensor_bytes:
            raise RemoteProtocolError(
                f"tensor {i} declares {nbytes} bytes, more than the frame's {self._tensor_bytes}"
            )
        return dtype, tuple(shape), nbytes

    def _drain_buffer_into_body(self) -> None:
        with memoryview(self._buf) as src:
            pos = 0
            while pos < len(src) and self._ready is None:
                dst = self._views[self._view_index]
                k = min(len(src) - pos, len(dst) - self._view_fill)
                dst[self._view_fill : self._view_fill + k] = src[pos : pos + k]
                pos += k
                self._advance_body(k)
        del self._buf[:pos]

    def _complete(self) -> None:
        self._ready = Frame(
            header=self._header,
            tensors=tuple(self._arrays),
            wire_bytes=PREFIX_SIZE + self._header_len + self._tensor_bytes,
        )
        self._header, self._arrays, self._views = {}, [], []
        self._view_index = self._view_fill = 0
        self._phase = _PREFIX_PHASE

    def _fail(self, exc: RemoteProtocolError) -> None:
        self._error = exc
        self._buf = bytearray()
        self._arrays, self._views = [], []

    # -- output --------------------------------------------------------------------------

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if more bytes are needed (or at a clean EOF).

        Raises
        ------
        RemoteProtocolError
            Malformed or over-limit input, or EOF in the middle of a frame; raised again
            (as a new exception of the same type) on every later call.
        VersionMismatchError
            The peer's frame carries another protocol version.
        """
        if self._ready is None:
            self._process()
        if self._ready is not None:
            frame, self._ready = self._ready, None
            return frame
        if self._error is None and self._eof and not self.idle:
            self._fail(
                RemoteProtocolError(
                    f"peer closed the connection in the middle of a frame ({self._phase})"
                )
            )
        if self._error is not None:
            if not self._error_raised:
                self._error_raised = True
                raise self._error
            raise type(self._error)(f"decoder already failed: {self._error}")
        return None

    @property
    def mid_body(self) -> bool:
        """True while tensor bytes of a frame are still expected and nothing is to report:
        :meth:`next_frame` would return ``None`` (the per-read fast path of the shells)."""
        return (
            self._phase == _BODY_PHASE
            and self._ready is None
            and self._error is None
            and not self._eof
            and not self._buf
        )

    @property
    def eof(self) -> bool:
        """True once EOF was fed."""
        return self._eof

    @property
    def idle(self) -> bool:
        """True between frames: no partial frame is buffered and none is waiting."""
        return self._phase == _PREFIX_PHASE and not self._buf and self._ready is None
